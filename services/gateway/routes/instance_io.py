"""Exec, files, console and logs of an instance: requests to the instance service.

Files and logs are raw bodies with LXD's ``X-LXD-*`` headers, not JSON; bodies too big for
one bus message travel through the transfers object store (see ``shared.messages.exec``).
"""

from __future__ import annotations

from aiohttp import web

from shared import blobs
from shared.errors import BadRequest
from shared.messages.exec import ExecRequest, FileRequest, LogRequest, pack, unpack
from shared.models import Reply

from .. import responses
from ..request import json_object, name_of, project_of, requestor
from ..routing import Context, render

SVC = "instance"


def _int_header(request: web.Request, name: str, base: int = 10) -> int:
    raw = request.headers.get(name, "").strip()
    if not raw:
        return -1
    try:
        return int(raw, base)
    except ValueError:
        raise BadRequest(f"Invalid {name} header {raw!r}: expected a number") from None


def _raw(data: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream",
                        headers=headers or {})


# -- request messages --------------------------------------------------------------------

async def exec_request(request: web.Request) -> ExecRequest:
    """``POST .../exec`` and ``POST .../console``: LXD's JSON body, websockets to come."""
    return ExecRequest(project=project_of(request), requestor=requestor(request),
                       name=name_of(request), body=await json_object(request))


async def file_request(request: web.Request) -> FileRequest:
    return FileRequest(project=project_of(request), requestor=requestor(request),
                       name=name_of(request), path=request.query.get("path", ""))


async def log_request(request: web.Request) -> LogRequest:
    """The console log, the list of log files, or one of them (``{file}``)."""
    return LogRequest(project=project_of(request), requestor=requestor(request),
                      name=name_of(request), **(
                          {"file": request.match_info["file"]}
                          if "file" in request.match_info else {}))


# -- answers that are not an envelope -----------------------------------------------------

async def file_contents(ctx: Context, request: web.Request, reply: Reply
                        ) -> web.StreamResponse:
    """A file's bytes (or a directory's entries) with its owner, mode and type headers."""
    meta = reply.metadata
    headers = {"X-LXD-uid": str(meta["uid"]), "X-LXD-gid": str(meta["gid"]),
               "X-LXD-mode": f"{meta['mode']:04o}", "X-LXD-type": meta["type"]}
    if request.method == "HEAD":
        return web.Response(headers=headers)
    if meta["type"] == "directory":
        resp = responses.sync(meta["entries"])
        resp.headers.update(headers)
        return resp
    return _raw(await unpack(ctx.bus, meta.get("data"), meta.get("blob")), headers)


async def raw_log(ctx: Context, _request: web.Request, reply: Reply) -> web.StreamResponse:
    """A console log or log file as plain bytes, as LXD serves them."""
    meta = reply.metadata
    return _raw(await unpack(ctx.bus, meta.get("data"), meta.get("blob")))


async def file_push(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST .../files``: the body and ``X-LXD-*`` headers become instance.file_put.

    A body too big for a message is staged in the transfers store, and deleted here if
    the service never took it.
    """
    h = request.headers
    req = FileRequest(
        project=project_of(request), requestor=requestor(request), name=name_of(request),
        path=request.query.get("path", ""), uid=_int_header(request, "X-LXD-uid"),
        gid=_int_header(request, "X-LXD-gid"), mode=_int_header(request, "X-LXD-mode", 8),
        type=h.get("X-LXD-type") or "file", write=h.get("X-LXD-write") or "overwrite",
        modify_perm=[p.strip() for p in h.get("X-LXD-modify-perm", "").split(",")
                     if p.strip()],
        **await pack(ctx.bus, await request.read(), "upload"))
    try:
        reply = await ctx.ask(SVC, "file_put", req)
    except Exception:
        if req.blob:
            await blobs.delete(await blobs.transfers(ctx.bus), req.blob)
        raise
    return render(reply)
