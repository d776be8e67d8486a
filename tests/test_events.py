"""Events reach websockets and NATS subscribers alike, and the stream replays them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import subjects


async def test_websocket_and_nats_get_the_same_event_and_stream_replays(stack, bus, aapi, uid):
    nats_events: list[dict] = []

    async def on_nats(msg):
        nats_events.append(json.loads(msg.data))

    sub = await bus.subscribe("corral.events.lifecycle.default.profile", on_nats)
    connector = aiohttp.UnixConnector(path=str(stack.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect("http://corral/1.0/events?type=lifecycle") as ws:
            r = await aapi.post("/1.0/profiles", json={"name": uid})
            assert r.status_code == 200
            ws_event = None
            while ws_event is None:
                msg = await asyncio.wait_for(ws.receive(), 10)
                event = json.loads(msg.data)
                assert event["type"] == "lifecycle"  # the type filter holds
                if event["metadata"]["source"] == f"/1.0/profiles/{uid}":
                    ws_event = event
    await sub.unsubscribe()
    assert ws_event["metadata"]["action"] == "profile-created"
    assert set(ws_event) == {"type", "timestamp", "metadata", "location", "project"}
    assert ws_event["metadata"]["requestor"] == {"username": "root", "protocol": "unix",
                                                 "address": "@"}
    assert ws_event in nats_events

    # A consumer created only now replays the event from the stream.
    replayed = []
    psub = await bus.js.subscribe(
        "corral.events.lifecycle.>", stream=subjects.EVENTS_STREAM, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        while True:
            msg = await psub.next_msg(timeout=5)
            replayed.append(json.loads(msg.data))
            if replayed[-1] == ws_event:
                break
    finally:
        await psub.unsubscribe()
    await aapi.delete(f"/1.0/profiles/{uid}")


async def test_operation_events_follow_every_state_change(bus):
    from shared.events import Events
    from shared.operations import Operations

    seen: list[dict] = []

    async def on_op(msg):
        seen.append(json.loads(msg.data))

    sub = await bus.subscribe("corral.events.operation.default.operation", on_op)
    ops = await Operations(bus, Events(bus)).open()

    async def work(handle):
        await handle.progress("stage", 50)

    op = await ops.start("Evented", work)
    await ops.wait_local(op.id)
    await bus.nc.flush()
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    statuses = [e["metadata"]["status"] for e in seen if e["metadata"]["id"] == op.id]
    assert statuses == ["Pending", "Running", "Running", "Success"]


async def test_service_logs_become_logging_events(stack, bus):
    """A restarted service says so on the bus as an LXD logging event."""
    import asyncio as aio

    seen: list[dict] = []

    async def on_log(msg):
        seen.append(json.loads(msg.data))

    sub = await bus.subscribe("corral.events.logging.>", on_log)
    stack.stop("migration")
    stack.start("migration")
    for _ in range(200):
        if any(e["metadata"]["message"] == "service started"
               and e["metadata"]["context"].get("service") == "migration" for e in seen):
            break
        await aio.sleep(0.05)
    await sub.unsubscribe()
    started = [e for e in seen if e["metadata"]["message"] == "service started"]
    assert started and started[0]["type"] == "logging"
    assert started[0]["metadata"]["level"] == "info"
