"""``/1.0/operations``: read from the shared operations bucket, so any gateway replica answers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.errors import BadRequest

from .. import responses
from ..request import all_projects, project_of, recursion_of
from ..routing import Context


async def list_(ctx: Context, request: web.Request) -> web.Response:
    recursion = recursion_of(request)
    project = None if all_projects(request) else project_of(request)
    grouped: dict[str, list[Any]] = {}
    for op in sorted(await ctx.ops.list(project), key=lambda o: o["created_at"]):
        grouped.setdefault(op["status"].lower(), []).append(
            op if recursion > 0 else f"/1.0/operations/{op['id']}")
    return responses.sync(grouped)


async def get(ctx: Context, request: web.Request) -> web.Response:
    return responses.sync(await ctx.ops.get(request.match_info["id"]))


async def cancel(ctx: Context, request: web.Request) -> web.Response:
    """Asks the process running the operation (``corral.operations.<id>.cancel``)."""
    await ctx.ops.cancel(request.match_info["id"])
    return responses.sync(None)


async def wait(ctx: Context, request: web.Request) -> web.Response:
    raw = request.query.get("timeout", "-1")
    try:
        timeout = float(raw)
    except ValueError:
        raise BadRequest(f"Invalid timeout {raw!r}: expected seconds, -1 for no limit"
                         ) from None
    return responses.sync(await ctx.ops.wait(request.match_info["id"], timeout))
