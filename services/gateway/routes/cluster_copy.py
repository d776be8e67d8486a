"""``POST /1.0/instances`` in a cluster: a copy to another member is a migration.

``lxc copy c1 c2 --target node3`` sends a create whose ``source.type`` is ``copy``; when
c1 is located on another member than node3, the copy is a migration between the two
members (services/gateway/cluster_move.py, as LXD's clusterCopyContainerInternal).
Everything else goes on to routes/backups.py (create, migration target, import).
"""

from __future__ import annotations

from aiohttp import web

from .. import cluster_move
from ..routing import Context, creation
from . import backups


async def instances_post(ctx: Context, request: web.Request) -> web.StreamResponse:
    kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctx.config.cluster and request.query.get("target") \
            and kind != "application/octet-stream":
        moved = await cluster_move.copy(ctx, request, await creation(request))
        if moved is not None:
            return moved
    return await backups.create_or_import(ctx, request)
