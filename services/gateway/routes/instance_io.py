"""Exec, files, console and logs of an instance: requests to the instance service.

Files and logs are raw bodies with LXD's ``X-LXD-*`` headers, not JSON; bodies too big for
one bus message travel through the transfers object store (see ``shared.messages.exec``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from shared import blobs
from shared.errors import BadRequest
from shared.messages.exec import INLINE_MAX, ExecRequest, FileRequest, LogRequest, unpack
from shared.models import Reply

from .. import responses
from ..limits import streams_body
from ..request import json_object, name_of, project_of, requestor
from ..routing import Context, render
from .images import stream_object
from .streams import keep_fds

SVC = "instance"


_CHUNK = 1024 * 1024


def _int_header(request: web.Request, name: str, base: int = 10, top: int = 2 ** 32 - 1
                ) -> int:
    """An id or mode header: -1 when absent (or sent as -1), else 0 to ``top``."""
    raw = request.headers.get(name, "").strip()
    if not raw:
        return -1
    try:
        value = int(raw, base)
    except ValueError:
        raise BadRequest(f"Invalid {name} header {raw[:40]!r}: expected a number") from None
    if not -1 <= value <= top:
        raise BadRequest(f"Invalid {name} header {raw[:40]!r}: expected 0 to "
                         f"{top if base == 10 else oct(top)[2:]}")
    return value


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
        if meta.get("blob"):  # the contents nobody will read
            await blobs.delete(await blobs.transfers(ctx.bus), meta["blob"])
        return web.Response(headers=headers)
    if meta["type"] == "directory":
        resp = responses.sync(meta["entries"])
        resp.headers.update(headers)
        return resp
    return await _bytes(ctx, request, meta, headers)


async def _bytes(ctx: Context, request: web.Request, meta: dict[str, Any],
                 headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Inline ``data`` as one response; a transfers ``blob`` streamed chunk by chunk (a
    big file or log never sits whole in the gateway's memory), then deleted."""
    if not meta.get("blob"):
        return _raw(await unpack(ctx.bus, meta.get("data"), None), headers)
    store = await blobs.transfers(ctx.bus)
    try:
        size = (await store.get_info(meta["blob"])).size or 0
        resp = web.StreamResponse(headers={**(headers or {}),
                                           "Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        await stream_object(store, meta["blob"], resp.write)
        await resp.write_eof()
        return resp
    finally:
        await blobs.delete(store, meta["blob"])


async def operation_started(ctx: Context, _request: web.Request, reply: Reply
                            ) -> web.StreamResponse:
    """An exec's or console's 202: its websocket secrets are kept for the websockets the
    client opens next (see ``streams.keep_fds``), then the reply as usual."""
    if reply.type == "async":
        await keep_fds(ctx, reply.operation)
    return render(reply)


async def raw_log(ctx: Context, request: web.Request, reply: Reply) -> web.StreamResponse:
    """A console log or log file as plain bytes, as LXD serves them."""
    meta = reply.metadata
    return await _bytes(ctx, request, meta)


async def _staged_body(ctx: Context, request: web.Request) -> dict[str, Any]:
    """The pushed bytes as ``{"data": ...}`` when they fit a message, else streamed to a
    temp file and from there to the transfers store as ``{"blob": name}``: a file of any
    size passes through the gateway a chunk at a time, never whole in memory."""
    head = await _read_up_to(request, INLINE_MAX + 1)
    if len(head) <= INLINE_MAX:
        return {"data": head}
    tmp_root = ctx.config.dir / "tmp"
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="push-", dir=tmp_root)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            while chunk := await request.content.read(_CHUNK):
                f.write(chunk)
        blob = f"upload-{uuid.uuid4().hex}"
        await blobs.put_file(await blobs.transfers(ctx.bus), blob, path)
        return {"blob": blob}
    finally:
        path.unlink(missing_ok=True)


async def _read_up_to(request: web.Request, size: int) -> bytes:
    data = bytearray()
    while len(data) < size and (chunk := await request.content.read(size - len(data))):
        data += chunk
    return bytes(data)


@streams_body
async def file_push(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``POST .../files``: the body and ``X-LXD-*`` headers become instance.file_put.

    A body too big for a message is staged in the transfers store, and deleted here if
    the service never took it.
    """
    h = request.headers
    fields = dict(
        project=project_of(request), requestor=requestor(request), name=name_of(request),
        path=request.query.get("path", ""), uid=_int_header(request, "X-LXD-uid"),
        gid=_int_header(request, "X-LXD-gid"),
        mode=_int_header(request, "X-LXD-mode", 8, top=0o7777),
        type=h.get("X-LXD-type") or "file", write=h.get("X-LXD-write") or "overwrite",
        modify_perm=[p.strip() for p in h.get("X-LXD-modify-perm", "").split(",")
                     if p.strip()])
    req = FileRequest(**fields, **await _staged_body(ctx, request))
    try:
        reply = await ctx.ask(SVC, "file_put", req)
    except Exception:
        if req.blob:
            await blobs.delete(await blobs.transfers(ctx.bus), req.blob)
        raise
    return render(reply)
