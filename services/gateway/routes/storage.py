"""Request messages of ``/1.0/storage-pools/<pool>/volumes``.

As LXD, every pool call is sync (create/update/delete reply with empty metadata once the
work is done), so the slow ones (mkfs, mount, delete) get a longer bus timeout (``SLOW``,
in the route table) instead of an operation the stock 5.0 client would not wait for.
"""

from __future__ import annotations

from aiohttp import web

from shared.messages.storage import VolumeGetRequest, VolumeListRequest

from ..request import all_projects, name_of, project_of, recursion_of, requestor

SLOW = 120.0  # seconds: formatting and mounting a pool, deleting one full of volumes


async def volume_listing(request: web.Request) -> VolumeListRequest:
    return VolumeListRequest(pool=name_of(request), kind=request.match_info.get("kind"),
                             project=project_of(request), recursion=recursion_of(request),
                             filter=request.query.get("filter") or None,
                             all_projects=all_projects(request),
                             requestor=requestor(request))


async def volume(request: web.Request) -> VolumeGetRequest:
    return VolumeGetRequest(pool=name_of(request), kind=request.match_info["kind"],
                            name=request.match_info["volume"], project=project_of(request),
                            requestor=requestor(request))
