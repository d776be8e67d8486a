"""LXD's migration API at the gateway: which instance POSTs go to the migration service.

``POST /1.0/instances/<name>`` with ``migration: true`` is the source of a migration
(``migration.source``), otherwise a rename (``instance.rename``); ``POST /1.0/instances``
with ``source.type: migration`` is its target (``migration.create``). The transfer runs in
the migration service; the websockets a client (or another server) dials come through
``/1.0/operations/<id>/websocket`` (routes/streams.py), whose secrets for a migration are
the operation's metadata itself (``control``, ``fs``), as LXD's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..routing import Context, item, render

# The secrets a migration operation's metadata holds (LXD's api.SecretName*).
SECRET_NAMES = ("control", "fs", "criu")


def is_target(body: dict[str, Any]) -> bool:
    src = body.get("source")
    return isinstance(src, dict) and src.get("type") == "migration"


async def instance_post(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST /1.0/instances/<name>``: a migration source or a rename."""
    req = await item(request)
    if (req.body or {}).get("migration"):
        return render(await ctx.ask("migration", "source", req))
    return render(await ctx.ask("instance", "rename", req))


def secrets_of(metadata: dict[str, Any] | None) -> dict[str, str]:
    """A migration operation's websocket secrets (its metadata's string entries named as
    LXD's), for the websocket route when the operation has no ``fds``."""
    meta = metadata or {}
    return {n: meta[n] for n in SECRET_NAMES if isinstance(meta.get(n), str)}
