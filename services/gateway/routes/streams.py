"""``/1.0/operations/<id>/websocket?secret=``: bridge one websocket to its bus streams."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web

from shared import streams
from shared.errors import Forbidden

from ..routing import Context


async def websocket(gw: Context, request: web.Request) -> web.StreamResponse:
    op_id = request.match_info["id"]
    op = await gw.ops.get(op_id)
    secret = request.query.get("secret", "")
    fds = ((op.get("metadata") or {}).get("fds") or {})
    fd = next((name for name, s in fds.items() if secret and s == secret), None)
    if fd is None:
        raise Forbidden("Wrong or missing websocket secret for this operation")
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    out: asyncio.Queue[Any] = asyncio.Queue()

    async def on_out(msg: Any) -> None:
        out.put_nowait(msg)

    sub = await gw.bus.subscribe(streams.subject(op_id, fd, "out"), on_out)
    # Tell the service (request/reply, so we know it heard) that this fd is connected. No
    # flush first: the server takes our SUB before this request (one connection, in
    # order), so nothing the service sends once it heard can miss the subscription.
    try:
        await gw.bus.nc.request(streams.subject(op_id, fd, "attached"), b"", timeout=5)
    except Exception:
        await sub.unsubscribe()
        await ws.close()
        return ws

    async def pump_out() -> None:
        while True:
            msg = await out.get()
            hdrs = msg.headers or {}
            if hdrs.get(streams.EOF_HEADER):
                await ws.close()
                return
            if hdrs.get(streams.TEXT_HEADER):
                await ws.send_str(msg.data.decode())
            else:
                await ws.send_bytes(msg.data)

    pumper = asyncio.create_task(pump_out())
    in_subject = streams.subject(op_id, fd, "in")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await gw.bus.publish(in_subject, msg.data)
            elif msg.type == WSMsgType.TEXT:
                await gw.bus.publish(in_subject, msg.data.encode(),
                                     headers={streams.TEXT_HEADER: "1"})
            else:
                break
    finally:
        await gw.bus.publish(in_subject, b"", headers={streams.EOF_HEADER: "1"})
        # Let what the service already sent reach the client before we drop it.
        try:
            await asyncio.wait_for(asyncio.shield(pumper), 0.5)
        except (asyncio.TimeoutError, Exception):
            pumper.cancel()
        await sub.unsubscribe()
    return ws

