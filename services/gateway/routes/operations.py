"""``/1.0/operations``: read from the shared operations bucket, so any gateway replica answers."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from shared.errors import BadRequest

from .. import responses
from ..request import all_projects, project_of, recursion_of
from ..routing import Context
from ..scrub import scrub
from .streams import started_operation


def _shown(ctx: Context, op: dict[str, Any]) -> dict[str, Any]:
    """The operation as clients see it: its error without the host's paths (see scrub),
    as every error the gateway renders."""
    if op.get("err"):
        return {**op, "err": scrub(op["err"], ctx.config.dir)}
    return op


async def list_(ctx: Context, request: web.Request) -> web.Response:
    recursion = recursion_of(request)
    project = None if all_projects(request) else project_of(request)
    grouped: dict[str, list[Any]] = {}
    for op in sorted(await ctx.ops.list(project), key=lambda o: o["created_at"]):
        grouped.setdefault(op["status"].lower(), []).append(
            _shown(ctx, op) if recursion > 0 else f"/1.0/operations/{op['id']}")
    return responses.sync(grouped)


async def get(ctx: Context, request: web.Request) -> web.Response:
    """One operation; a running exec's from its 202 when this gateway relayed that (no
    KV read: ``lxc exec`` reads it once its websockets are up, see Secrets.started)."""
    op_id = request.match_info["id"]
    op = started_operation(op_id) or await ctx.ops.get(op_id)
    return responses.sync(_shown(ctx, op))


async def cancel(ctx: Context, request: web.Request) -> web.Response:
    """Asks the process running the operation (``corral.operations.<id>.cancel``)."""
    await ctx.ops.cancel(request.match_info["id"])
    return responses.sync(None)


async def wait(ctx: Context, request: web.Request) -> web.Response:
    raw = request.query.get("timeout", "-1")
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout):
        raise BadRequest(f"Invalid timeout {raw[:40]!r}: expected seconds, -1 for no limit")
    return responses.sync(_shown(ctx, await ctx.ops.wait(request.match_info["id"], timeout)))
