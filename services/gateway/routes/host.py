"""``GET /1.0/resources``: the hardware of one node, asked of that node's instance service.

Why not a plain ``ask``: the answer is bound to a host, so it goes to
``corral.node.<node>.instance.resources`` (``?target=<node>`` as LXD's clusters say it,
else the gateway's own node), never to whichever instance service replica is free.
"""

from __future__ import annotations

from aiohttp import web

from shared.errors import BadRequest
from shared.models import ListRequest

from ..request import project_of, requestor
from ..routing import Context, render


async def resources(ctx: Context, request: web.Request) -> web.Response:
    node = request.query.get("target") or ctx.config.node
    if not node or any(c in node for c in ".*> \t"):
        raise BadRequest(f"Invalid target {node!r}: give a node name")
    req = ListRequest(project=project_of(request), requestor=requestor(request))
    return render(await ctx.bus.request("instance", "resources", req, node=node))
