"""Custom storage volumes: ``/1.0/storage-pools/<pool>/volumes/custom[/<v>[/snapshots...]]``.

Rows of the gateway's route table, before STORAGE's generic ``{kind}`` rows. Each is one
bus request to the storage service (``custom_*`` verbs, one message shape,
:class:`CustomVolumeRequest`); what the gateway adds is the *storage project*: a project
without ``features.storage.volumes`` works on ``default``'s custom volumes, as LXD's
``StorageVolumeProject`` (the project record is the one :mod:`..projects` just fetched
and cached for ``?project=``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shared import blobs
from shared.errors import BadRequest
from shared.messages.custom_volumes import CustomVolumeRequest

from ..limits import streams_body
from ..projects import project_record
from ..request import (
    all_projects,
    etag_of,
    json_object,
    name_of,
    recursion_of,
    requestor,
)
from ..routing import Ask, Build, Context, Route, render
from . import backup_streams
from .storage import SLOW

POOL_CUSTOM = "/1.0/storage-pools/{name}/volumes/custom"
VOLUME = POOL_CUSTOM + "/{volume}"
SNAPSHOTS = VOLUME + "/snapshots"
SNAPSHOT = SNAPSHOTS + "/{snapshot}"
FEATURE = "features.storage.volumes"


async def storage_project(ctx: Context, request: web.Request, name: str | None = None
                          ) -> str:
    """The project whose custom volumes the request (or the project ``name``) works on."""
    name = name or request.query.get("project") or "default"
    if name == "default":
        return name
    record = await project_record(ctx.bus, name)  # 404 for an unknown project
    value = (record.get("config") or {}).get(FEATURE, "")
    return name if value.lower() in ("true", "1", "yes", "on") else "default"


async def _map_body_projects(ctx: Context, request: web.Request) -> None:
    """Projects a body names, as storage projects: a copy's ``source.project`` (a project
    without the feature reads default's volumes), a move's target ``project`` (which
    must have the feature: 400 with LXD's message otherwise)."""
    if request.method != "POST" or request.content_type != "application/json":
        return
    body = await json_object(request)
    source = body.get("source")
    if isinstance(source, dict) and isinstance(source.get("project"), str) \
            and source["project"]:
        source["project"] = await storage_project(ctx, request, source["project"])
    target = body.get("project")
    if isinstance(target, str) and target and "volume" in request.match_info \
            and "snapshot" not in request.match_info and "backup" not in request.match_info:
        if await storage_project(ctx, request, target) != target:
            raise BadRequest("Target project does not have features.storage.volumes "
                             "enabled")


_STORAGE_PROJECT = web.RequestKey("corral.storage_project", str)


@dataclass(frozen=True)
class CustomAsk(Ask):
    """An :class:`Ask` that first finds the request's storage project (a bus question
    of its own, which a ``build`` of the request alone cannot ask)."""

    async def __call__(self, ctx: Context, request: web.Request) -> web.StreamResponse:
        request[_STORAGE_PROJECT] = await storage_project(ctx, request)
        await _map_body_projects(ctx, request)
        return await super().__call__(ctx, request)


def _builder(body: bool) -> Build:
    async def build(request: web.Request) -> CustomVolumeRequest:
        return CustomVolumeRequest(
            project=request[_STORAGE_PROJECT],
            request_project=request.query.get("project") or "default",
            pool=name_of(request), name=request.match_info.get("volume", ""),
            snapshot=request.match_info.get("snapshot", ""),
            backup=request.match_info.get("backup", ""),
            body=await json_object(request) if body else None, etag=etag_of(request),
            recursion=recursion_of(request) if request.method == "GET" else 0,
            filter=request.query.get("filter") or None,
            all_projects=all_projects(request), requestor=requestor(request))
    return build


def custom(verb: str, *, body: bool = False, timeout: float | None = None) -> CustomAsk:
    """A route asking ``storage.<verb>`` with a :class:`CustomVolumeRequest`."""
    return CustomAsk("storage", verb, _builder(body), timeout)


_CREATE = custom("custom_create", body=True, timeout=SLOW)
_running: set[asyncio.Task[None]] = set()


@streams_body
async def create_or_import(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST .../volumes/custom``: JSON is ``storage.custom_create``; an
    ``application/octet-stream`` body is a volume backup (``lxc storage volume import``):
    staged in the ``transfers`` object store, then ``storage.custom_import`` (an
    operation; the staged upload is removed when it ends, or expires with the bucket's
    TTL)."""
    if request.content_type != "application/octet-stream":
        return await _CREATE(ctx, request)
    project = await storage_project(ctx, request)
    transfers = await blobs.transfers(ctx.bus)
    obj = await backup_streams.stage_upload(ctx, request, transfers, "vol-import",
                                            "a volume backup tarball")
    try:
        reply = await ctx.ask("storage", "custom_import", CustomVolumeRequest(
            project=project, request_project=request.query.get("project") or "default",
            pool=name_of(request), name=request.headers.get("X-LXD-name", ""), object=obj,
            requestor=requestor(request)))
    except BaseException:
        await blobs.delete(transfers, obj)
        raise
    op_id = (reply.operation or {}).get("id")
    if op_id:
        task = asyncio.create_task(_forget_when_done(ctx, transfers, obj, op_id))
        _running.add(task)
        task.add_done_callback(_running.discard)
    else:
        await blobs.delete(transfers, obj)
    return render(reply)


async def _forget_when_done(ctx: Context, transfers: Any, obj: str, op_id: str) -> None:
    try:
        await ctx.ops.wait(op_id, 3600.0)
    except Exception:
        pass
    await blobs.delete(transfers, obj)


async def backup_export(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``GET .../backups/<b>/export``: the tarball, streamed as the storage service makes
    it (:mod:`.downloads`, as instance backups)."""
    project = await storage_project(ctx, request)
    return await backup_streams.relay(ctx, request, "storage", lambda sid: ctx.ask(
        "storage", "custom_backup_export", CustomVolumeRequest(
            project=project, pool=name_of(request), name=request.match_info["volume"],
            backup=request.match_info["backup"], stream=sid, requestor=requestor(request))))


BACKUPS = VOLUME + "/backups"
BACKUP = BACKUPS + "/{backup}"

ROUTES: list[Route] = [
    Route("GET", POOL_CUSTOM, custom("custom_list")),
    Route("POST", POOL_CUSTOM, create_or_import),  # storage.custom_create / custom_import
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
    Route("GET", BACKUPS, custom("custom_backup_list")),
    Route("POST", BACKUPS, custom("custom_backup_create", body=True)),
    Route("GET", BACKUP + "/export", backup_export),  # storage.custom_backup_export
    Route("GET", BACKUP, custom("custom_backup_get")),
    Route("POST", BACKUP, custom("custom_backup_rename", body=True)),
    Route("DELETE", BACKUP, custom("custom_backup_delete")),
]
