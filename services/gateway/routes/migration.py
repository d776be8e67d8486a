"""LXD's migration API at the gateway: which instance POSTs go to the migration service.

``POST /1.0/instances/<name>`` with ``migration: true`` is the source of a migration
(``migration.source``), otherwise a rename (``instance.rename``); ``POST /1.0/instances``
with ``source.type: migration`` is its target (``migration.create``). The transfer runs in
the migration service (in a cluster, the instance's member's); the websockets a client
(or another server) dials come through ``/1.0/operations/<id>/websocket``
(routes/streams.py), whose secrets for a migration are the operation's metadata itself
(``control``, ``fs``), as LXD's. In a cluster, ``?target=`` makes it a move between
members (cluster_move.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import cluster_move
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
        node = None
        if ctx.config.cluster:  # the source reads the volume: on the instance's member
            node = await cluster_move.mover_of(ctx).placement.location(req.project, req.name)
        return render(await ctx.bus.request("migration", "source", req, node=node)
                      if node else await ctx.ask("migration", "source", req))
    if is_cluster_move(req.body, request, ctx.config.cluster):
        return await cluster_move.move(ctx, request, req)
    return await Ask("instance", "rename", _built(req))(ctx, request)


def is_cluster_move(body: dict[str, Any] | None, request: web.Request, cluster: bool
                    ) -> bool:
    """``lxc move c1 --target node2``: ``migration`` with ``?target=`` in a cluster (LXD's
    instancePostClusteringMigrate); ``pool``/``project`` moves stay the instance service's."""
    body = body or {}
    return cluster and bool(body.get("migration")) and bool(request.query.get("target")) \
        and not body.get("pool") and not body.get("project")


def _built(req: Any) -> Any:
    async def build(_request: web.Request) -> Any:
        return req
    return build


def secrets_of(metadata: dict[str, Any] | None) -> dict[str, str]:
    """A migration operation's websocket secrets (its metadata's string entries named as
    LXD's), for the websocket route when the operation has no ``fds``."""
    meta = metadata or {}
    return {n: meta[n] for n in SECRET_NAMES if isinstance(meta.get(n), str)}
