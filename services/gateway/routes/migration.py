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

from ..routing import Ask, Context, item, render

# The secrets a migration operation's metadata holds (LXD's api.SecretName*).
SECRET_NAMES = ("control", "fs", "criu")


def is_target(body: dict[str, Any]) -> bool:
    src = body.get("source")
    return isinstance(src, dict) and src.get("type") == "migration"


def is_source(body: dict[str, Any] | None, request: web.Request) -> bool:
    """A migration to another server: ``migration`` without ``pool`` (``lxc move
    --storage``), ``project`` (a project move) or ``?target=`` (a cluster move), which
    stay on this server and are the instance service's, as LXD's instancePost tells."""
    body = body or {}
    return bool(body.get("migration")) and not body.get("pool") \
        and not body.get("project") and not request.query.get("target")


async def instance_post(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST /1.0/instances/<name>``: a migration source, else the instance service's
    (rename, pool or project move)."""
    req = await item(request)
    if is_source(req.body, request):
        return render(await ctx.ask("migration", "source", req))
    return await Ask("instance", "rename", _built(req))(ctx, request)


def _built(req: Any) -> Any:
    async def build(_request: web.Request) -> Any:
        return req
    return build


def secrets_of(metadata: dict[str, Any] | None) -> dict[str, str]:
    """A migration operation's websocket secrets (its metadata's string entries named as
    LXD's), for the websocket route when the operation has no ``fds``."""
    meta = metadata or {}
    return {n: meta[n] for n in SECRET_NAMES if isinstance(meta.get(n), str)}
