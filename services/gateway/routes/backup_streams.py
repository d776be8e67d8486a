"""Backup tarballs through the gateway, both ways, for instances and custom volumes.

:func:`stage_upload`: an import's body (``lxc import``, ``lxc storage volume import``)
into the ``transfers`` object store, through a file under ``CORRAL_DIR/tmp`` (the
service reads it from the store, whatever node it runs on).

:func:`relay`: a download a service makes while it is sent (exports), the gateway's end
of :func:`shared.streams.start_download`.

The gateway subscribes to the stream first, then asks the service to start (the reply
names the file); each chunk is written to the client and answered with one credit, so the
service stays a bounded number of chunks ahead. A failure after the headers went out
breaks the connection off (a failed download, never a short file that looks whole); a
client that goes away tells the service with an EOF, so it stops writing.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from shared import blobs, streams
from shared.errors import BadRequest
from shared.log import get_logger
from shared.models import Reply

from ..routing import Context

# Seconds without a chunk before the download is given up (the producer is gone).
CHUNK_TIMEOUT = 120.0
_CHUNK = 1024 * 1024


async def stage_upload(ctx: Context, request: web.Request, transfers: Any, prefix: str,
                       what: str) -> str:
    """The request body into the object store as a new object (its name is returned);
    an empty body is a 400 naming ``what`` it should have been."""
    tmp_root = ctx.config.dir / "tmp"
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=tmp_root))
    obj = f"{prefix}-{uuid.uuid4().hex}"
    try:
        size = 0
        with open(tmp / "backup", "wb") as f:
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                await asyncio.to_thread(f.write, chunk)
        if size == 0:
            raise BadRequest(f"Empty backup: the body must be {what}")
        await blobs.put_file(transfers, obj, tmp / "backup")
        return obj
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def relay(ctx: Context, request: web.Request, service: str,
                start: Callable[[str], Awaitable[Reply]]) -> web.StreamResponse:
    """Serve the download ``start(stream_id)`` asks ``service`` to make."""
    sid = uuid.uuid4().hex
    chunks: asyncio.Queue[Any] = asyncio.Queue()

    async def on_out(msg: Any) -> None:
        chunks.put_nowait(msg)

    sub = await ctx.bus.subscribe(streams.subject(sid, streams.DOWNLOAD_FD, "out"), on_out)
    in_subject = streams.subject(sid, streams.DOWNLOAD_FD, "in")
    finished = False
    try:
        await ctx.bus.nc.flush()
        reply = await start(sid)
        name = (reply.metadata or {}).get("filename", "backup.tar.gz")
        resp = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment;filename={name}"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        while True:
            try:
                msg = await asyncio.wait_for(chunks.get(), CHUNK_TIMEOUT)
            except asyncio.TimeoutError:
                raise ConnectionAbortedError(f"the {service} service stopped sending") from None
            hdrs = msg.headers or {}
            if hdrs.get(streams.DOWNLOAD_ERROR_HEADER):
                get_logger(component="gateway").warning(
                    "download failed", path=request.path,
                    error=hdrs[streams.DOWNLOAD_ERROR_HEADER])
                raise ConnectionAbortedError(hdrs[streams.DOWNLOAD_ERROR_HEADER])
            if hdrs.get(streams.EOF_HEADER):
                break
            await resp.write(msg.data)
            await ctx.bus.publish(in_subject, b"")  # credit for one more chunk
        await resp.write_eof()
        finished = True
        return resp
    except ConnectionAbortedError:
        if request.transport is not None:  # headers are out: break the connection
            request.transport.close()
        raise
    finally:
        if not finished:  # the client went away or we failed: the producer stops
            try:
                await ctx.bus.publish(in_subject, b"", headers={streams.EOF_HEADER: "1"})
            except Exception:
                pass
        await sub.unsubscribe()
