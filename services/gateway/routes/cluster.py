"""``/1.0/cluster`` and ``/1.0/cluster/members``: LXD 5.0's shapes over the ``members`` bucket.

Every gateway reads the same replicated bucket, so ``lxc cluster list`` answers the same on
any node, and a member's status is judged from its heartbeat's age by whoever reads it
(``shared.cluster.status_of``): a node killed outright turns OFFLINE on the others
without having said goodbye. A standalone server answers ``enabled: false`` as LXD does.
"""

from __future__ import annotations

from aiohttp import web

from shared.cluster import Member, open_members, read_members, status_of
from shared.errors import BadRequest, NotFound
from shared.state import Store

from .. import responses
from ..request import recursion_of
from ..routing import Context

# What LXD 5.0 advertises for the parts of clustering served here (lxc checks them).
API_EXTENSIONS = ["clustering", "clustering_roles", "clustering_architecture",
                  "clustering_failure_domains", "clustering_description",
                  "clustering_sizing", "clustering_server_address"]

_stores: dict[int, Store] = {}


async def _members(ctx: Context) -> list[Member]:
    store = _stores.get(id(ctx.bus))
    if store is None:
        store = _stores[id(ctx.bus)] = await open_members(ctx.bus)
    return await read_members(store)


def _require_cluster(ctx: Context) -> None:
    if not ctx.config.cluster:
        raise BadRequest("This server isn't part of a cluster (standalone: start the nodes "
                         "with `make cluster-up`, see docs/cluster.md)")


def render(member: Member) -> dict[str, object]:
    """One member in LXD 5.0's ``ClusterMember`` shape."""
    status, message = status_of(member)
    return {
        "server_name": member.name,
        "url": member.url,
        "database": member.database,
        "status": status,
        "message": message,
        "architecture": member.architecture,
        "failure_domain": member.failure_domain,
        "description": member.description,
        "roles": member.roles,
        "config": {},
        "groups": ["default"],
    }


async def cluster_get(ctx: Context, _request: web.Request) -> web.Response:
    """``GET /1.0/cluster``: this node's name, and whether clustering is on."""
    if not ctx.config.cluster:
        return responses.sync({"server_name": "", "enabled": False, "member_config": []})
    return responses.sync({"server_name": ctx.config.node, "enabled": True,
                           "member_config": []})


async def members_list(ctx: Context, request: web.Request) -> web.Response:
    """``GET /1.0/cluster/members``: URLs, or the members at recursion=1."""
    _require_cluster(ctx)
    members = await _members(ctx)
    if recursion_of(request) >= 1:
        return responses.sync([render(m) for m in members])
    return responses.sync([f"/1.0/cluster/members/{m.name}" for m in members])


async def member_get(ctx: Context, request: web.Request) -> web.Response:
    """``GET /1.0/cluster/members/<name>``."""
    _require_cluster(ctx)
    name = request.match_info["name"]
    for member in await _members(ctx):
        if member.name == name:
            return responses.sync(render(member))
    raise NotFound("Cluster member not found")
