"""``/1.0/instances/<n>/backups``: backup CRUD (bus requests to the instance service), the
export (a byte stream from the instance service) and ``lxc import`` (an upload staged in
the ``transfers`` object store, as image uploads are).

Export: we subscribe to ``corral.streams.<id>.data.out`` first, then ask
``instance.backup_export``; the tarball's chunks follow, each acknowledged on ``.in`` once
written to the client (credit: the service stays at most a window ahead). The length is
not known before the end (the tarball is made while it is sent), so the answer is chunked.
A failure after the first byte cannot change the status any more: the connection is
broken off, so the client sees a failed download, never a short file that looks whole.
"""

from __future__ import annotations

from aiohttp import web

from shared import blobs
from shared.messages.backup import BackupExportRequest, BackupImportRequest, BackupRequest
from shared.models import ObjectRequest

from ..limits import streams_body
from ..request import json_object, name_of, project_of, recursion_of, requestor
from ..routing import Context, Route, ask, creation, render
from . import backup_streams, migration

INSTANCE = "/1.0/instances/{name}"
BACKUP = INSTANCE + "/backups/{backup}"


async def listing(request: web.Request) -> ObjectRequest:
    return ObjectRequest(project=project_of(request), name=name_of(request),
                         requestor=requestor(request),
                         body={"recursion": recursion_of(request)})


async def one(request: web.Request) -> BackupRequest:
    body = await json_object(request) if request.method == "POST" else None
    return BackupRequest(project=project_of(request), name=name_of(request),
                         backup=request.match_info.get("backup", ""), body=body,
                         requestor=requestor(request))


async def creating(request: web.Request) -> BackupRequest:
    body = await json_object(request) if request.can_read_body else {}
    return BackupRequest(project=project_of(request), name=name_of(request), body=body,
                         requestor=requestor(request))


async def export(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``GET .../backups/<b>/export``: the tarball, streamed as it is made."""
    return await backup_streams.relay(ctx, request, "instance", lambda sid: ctx.ask(
        "instance", "backup_export", BackupExportRequest(
            project=project_of(request), name=name_of(request),
            backup=request.match_info["backup"], stream=sid, requestor=requestor(request))))


@streams_body
async def create_or_import(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST /1.0/instances``: JSON is ``instance.create``; an ``application/octet-stream``
    body is a backup tarball (``lxc import``): staged, then ``instance.backup_import``.
    The header itself is read, as LXD does: aiohttp's ``content_type`` says octet-stream
    when there is no header at all, and a JSON body sent without one is still a create."""
    kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind != "application/octet-stream":
        req = await creation(request)
        if migration.is_target(req.body):  # LXD's migration target: the migration service
            return render(await ctx.ask("migration", "create", req))
        return render(await ctx.ask("instance", "create", req,
                                    target=request.query.get("target")))
    transfers = await blobs.transfers(ctx.bus)
    obj = await backup_streams.stage_upload(ctx, request, transfers, "import",
                                            "a backup tarball")
    try:
        req = BackupImportRequest(project=project_of(request), requestor=requestor(request),
                                  object=obj, name=request.headers.get("X-LXD-name", ""),
                                  pool=request.headers.get("X-LXD-pool", ""))
        reply = await ctx.ask("instance", "backup_import", req,
                              target=request.query.get("target"))
    except BaseException:  # the instance service deletes it once it has the request
        await blobs.delete(transfers, obj)
        raise
    return render(reply)


ROUTES: list[Route] = [
    Route("GET", INSTANCE + "/backups", ask("instance", "backup_list", listing)),
    Route("POST", INSTANCE + "/backups", ask("instance", "backup_create", creating)),
    Route("GET", BACKUP + "/export", export),  # instance.backup_export, then the bytes
    Route("GET", BACKUP, ask("instance", "backup_get", one)),
    Route("POST", BACKUP, ask("instance", "backup_rename", one)),
    Route("DELETE", BACKUP, ask("instance", "backup_delete", one)),
]
