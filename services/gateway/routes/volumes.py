"""Custom storage volumes: ``/1.0/storage-pools/<pool>/volumes/custom[/<v>[/snapshots...]]``.

Rows of the gateway's route table, before STORAGE's generic ``{kind}`` rows. Each is one
bus request to the storage service (``custom_*`` verbs, one message shape,
:class:`CustomVolumeRequest`); what the gateway adds is the *storage project*: a project
without ``features.storage.volumes`` works on ``default``'s custom volumes, as LXD's
``StorageVolumeProject`` (the project record is the one :mod:`..projects` just fetched
and cached for ``?project=``).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from shared.messages.custom_volumes import CustomVolumeRequest

from ..projects import project_record
from ..request import (
    all_projects,
    etag_of,
    json_object,
    name_of,
    recursion_of,
    requestor,
)
from ..routing import Ask, Build, Context, Route
from .storage import SLOW

POOL_CUSTOM = "/1.0/storage-pools/{name}/volumes/custom"
VOLUME = POOL_CUSTOM + "/{volume}"
SNAPSHOTS = VOLUME + "/snapshots"
SNAPSHOT = SNAPSHOTS + "/{snapshot}"
FEATURE = "features.storage.volumes"


async def storage_project(ctx: Context, request: web.Request) -> str:
    """The project whose custom volumes the request works on."""
    name = request.query.get("project") or "default"
    if name == "default":
        return name
    record = await project_record(ctx.bus, name)  # 404 for an unknown project
    value = (record.get("config") or {}).get(FEATURE, "")
    return name if value.lower() in ("true", "1", "yes", "on") else "default"


_STORAGE_PROJECT = web.RequestKey("corral.storage_project", str)


@dataclass(frozen=True)
class CustomAsk(Ask):
    """An :class:`Ask` that first finds the request's storage project (a bus question
    of its own, which a ``build`` of the request alone cannot ask)."""

    async def __call__(self, ctx: Context, request: web.Request) -> web.StreamResponse:
        request[_STORAGE_PROJECT] = await storage_project(ctx, request)
        return await super().__call__(ctx, request)


def _builder(body: bool) -> Build:
    async def build(request: web.Request) -> CustomVolumeRequest:
        return CustomVolumeRequest(
            project=request[_STORAGE_PROJECT],
            request_project=request.query.get("project") or "default",
            pool=name_of(request), name=request.match_info.get("volume", ""),
            snapshot=request.match_info.get("snapshot", ""),
            body=await json_object(request) if body else None, etag=etag_of(request),
            recursion=recursion_of(request) if request.method == "GET" else 0,
            all_projects=all_projects(request), requestor=requestor(request))
    return build


def custom(verb: str, *, body: bool = False, timeout: float | None = None) -> CustomAsk:
    """A route asking ``storage.<verb>`` with a :class:`CustomVolumeRequest`."""
    return CustomAsk("storage", verb, _builder(body), timeout)


ROUTES: list[Route] = [
    Route("GET", POOL_CUSTOM, custom("custom_list")),
    Route("POST", POOL_CUSTOM, custom("custom_create", body=True, timeout=SLOW)),
    Route("GET", VOLUME, custom("custom_get")),
    Route("PUT", VOLUME, custom("custom_update", body=True, timeout=SLOW)),
    Route("PATCH", VOLUME, custom("custom_patch", body=True, timeout=SLOW)),
    Route("POST", VOLUME, custom("custom_rename", body=True, timeout=SLOW)),
    Route("DELETE", VOLUME, custom("custom_delete", timeout=SLOW)),
    Route("GET", VOLUME + "/state", custom("custom_state")),
    Route("GET", SNAPSHOTS, custom("custom_snapshot_list")),
    Route("POST", SNAPSHOTS, custom("custom_snapshot_create", body=True)),
    Route("GET", SNAPSHOT, custom("custom_snapshot_get")),
    Route("PUT", SNAPSHOT, custom("custom_snapshot_update", body=True)),
    Route("PATCH", SNAPSHOT, custom("custom_snapshot_patch", body=True)),
    Route("POST", SNAPSHOT, custom("custom_snapshot_rename", body=True)),
    Route("DELETE", SNAPSHOT, custom("custom_snapshot_delete")),
]
