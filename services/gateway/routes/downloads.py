"""A download a service makes while it is sent (backup exports of instances and custom
volumes): the gateway's end of :func:`shared.streams.start_download`.

The gateway subscribes to the stream first, then asks the service to start (the reply
names the file); each chunk is written to the client and answered with one credit, so the
service stays a bounded number of chunks ahead. A failure after the headers went out
breaks the connection off (a failed download, never a short file that looks whole); a
client that goes away tells the service with an EOF, so it stops writing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web

from shared import streams
from shared.log import get_logger
from shared.models import Reply

from ..routing import Context

# Seconds without a chunk before the download is given up (the producer is gone).
CHUNK_TIMEOUT = 120.0


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
