"""Instance snapshots: ``/1.0/instances/<n>/snapshots[/<s>]`` and the restore PUT.

Rows of the gateway's route table (before INSTANCES' rows, so these literal segments win;
aliased under ``/1.0/containers``). Each is one bus request to the instance service's
``snapshot_*`` verbs; a snapshot is named ``<instance>/<snapshot>`` in the request's
``name``, as LXD names it internally (an instance name never holds a ``/``).

``PUT /1.0/instances/<n>`` is here too: LXD's ``instancePut`` branches on ``restore``
before anything else, and a restore is a long operation (a running instance is stopped,
restored and started), so a body with ``restore`` goes to ``snapshot_restore`` and any
other to the instance service's ``update``, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from shared.config import env_seconds
from shared.messages.lxd import check_body
from shared.models import ObjectRequest

from ..request import etag_of, json_object, name_of, project_of, recursion_of, requestor
from ..routing import Ask, Context, Route, ask, item, render

INSTANCE = "/1.0/instances/{name}"
SNAPSHOTS = INSTANCE + "/snapshots"
SNAPSHOT = SNAPSHOTS + "/{snapshot}"


async def snapshot_listing(request: web.Request) -> ObjectRequest:
    """``GET .../snapshots``: the instance and the recursion."""
    return ObjectRequest(project=project_of(request), name=name_of(request),
                         body={"recursion": recursion_of(request)},
                         requestor=requestor(request))


async def snapshot_creation(request: web.Request) -> ObjectRequest:
    """``POST .../snapshots``: the instance and LXD's InstanceSnapshotsPost."""
    return ObjectRequest(project=project_of(request), name=name_of(request),
                         body=await json_object(request), requestor=requestor(request))


async def snapshot_item(request: web.Request) -> ObjectRequest:
    """One snapshot as ``<instance>/<snapshot>``; PUT/PATCH/POST carry a JSON object."""
    body = await json_object(request) if request.method in ("PUT", "PATCH", "POST") else None
    full = f"{name_of(request)}/{name_of(request, 'snapshot')}"
    return ObjectRequest(project=project_of(request), name=full, body=body,
                         etag=etag_of(request), requestor=requestor(request))


@dataclass(frozen=True)
class RestoreOrUpdate(Ask):
    """``PUT /1.0/instances/<n>``: the instance's ``update`` (this Ask's verb), or, for a
    body with ``restore``, ``snapshot_restore`` (an operation)."""

    async def __call__(self, ctx: Context, request: web.Request) -> web.StreamResponse:
        body = await json_object(request)
        if body.get("restore") in (None, ""):
            return await super().__call__(ctx, request)
        body = check_body("instance", "update", body)  # LXD's InstancePut types
        req = ObjectRequest(project=project_of(request), name=name_of(request), body=body,
                            etag=etag_of(request), requestor=requestor(request))
        return render(await ctx.ask("instance", "snapshot_restore", req))


# A config change applies devices live (hot-plug, a VM's detach waits for the guest).
# Seconds; CORRAL_LIVE_CHANGE_TIMEOUT: a test that kills the instance service mid-change
# waits less for the 503.
LIVE_CHANGE = env_seconds("CORRAL_LIVE_CHANGE_TIMEOUT", 60.0, 1.0)

instance_put = RestoreOrUpdate("instance", "update", item, timeout=LIVE_CHANGE)


ROUTES: list[Route] = [
    Route("PUT", INSTANCE, instance_put),  # instance.update or instance.snapshot_restore
    Route("GET", SNAPSHOTS, ask("instance", "snapshot_list", snapshot_listing)),
    Route("POST", SNAPSHOTS, ask("instance", "snapshot_create", snapshot_creation)),
    Route("GET", SNAPSHOT, ask("instance", "snapshot_get", snapshot_item)),
    Route("PUT", SNAPSHOT, ask("instance", "snapshot_update", snapshot_item)),
    Route("PATCH", SNAPSHOT, ask("instance", "snapshot_patch", snapshot_item)),
    Route("POST", SNAPSHOT, ask("instance", "snapshot_rename", snapshot_item)),
    Route("DELETE", SNAPSHOT, ask("instance", "snapshot_delete", snapshot_item)),
]
