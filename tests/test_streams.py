"""Operation websockets: the gateway bridges them to the bus, in order, both ways."""

from __future__ import annotations

import asyncio

import aiohttp

from shared import streams
from shared.bus import Bus
from shared.events import Events
from shared.operations import Operations


async def test_websocket_bytes_flow_both_ways_through_the_bus(bus_config, stack):
    # The service end stands in for the instance service, as its bus user: nobody else
    # may use the byte streams (shared/auth.py).
    config = bus_config.model_copy(update={"nats_credentials":
                                           stack.nats.credentials("instance")})
    bus = await Bus(config, "instance-standin").connect()
    try:
        await _bytes_flow(bus, stack)
    finally:
        await bus.close()


async def _bytes_flow(bus, stack):
    ops = await Operations(bus, Events(bus)).open()
    fds = streams.new_fds(["0", "1", "control"])
    holder = {}

    async def work(handle):
        s = await streams.ServiceStreams(bus, handle.id, list(fds)).open()
        holder["ready"].set_result(None)
        try:
            await s.wait_attached(20)
            await s.send_text("control", '{"hello": 1}')
            received = b""
            while (chunk := await s.inbox["0"].get()) is not None:
                received += chunk
                await s.send("1", chunk.upper())
            return {"return": len(received)}
        finally:
            await s.close()

    holder["ready"] = asyncio.get_running_loop().create_future()
    op = await ops.start("Streaming", work, metadata={"fds": fds})
    await holder["ready"]
    connector = aiohttp.UnixConnector(path=str(stack.socket))
    base = f"http://corral/1.0/operations/{op.id}/websocket?secret="
    async with aiohttp.ClientSession(connector=connector) as session:
        bad = await session.get(base + "wrong")
        assert bad.status == 403
        control = await session.ws_connect(base + fds["control"])
        out = await session.ws_connect(base + fds["1"])
        inp = await session.ws_connect(base + fds["0"])
        msg = await asyncio.wait_for(control.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == '{"hello": 1}'
        payload = bytes(range(256)) * 64
        for i in range(0, len(payload), 1000):
            await inp.send_bytes(payload[i:i + 1000])
        got = b""
        while len(got) < len(payload):
            m = await asyncio.wait_for(out.receive(), 10)
            assert m.type == aiohttp.WSMsgType.BINARY
            got += m.data
        assert got == payload.upper()
        await inp.close()  # EOF on stdin ends the work
        end = await asyncio.wait_for(out.receive(), 10)
        assert end.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING)
        await control.close()
    await ops.wait_local(op.id)
    final = await ops.get(op.id)
    assert final["status"] == "Success" and final["metadata"]["return"] == len(payload)
