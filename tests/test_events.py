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


async def _stream_events(bus, subject: str, timeout: float = 5.0) -> list:
    """Every message of the events stream on ``subject``, from the start."""
    out = []
    psub = await bus.js.subscribe(subject, stream=subjects.EVENTS_STREAM, ordered_consumer=True,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        while True:
            try:
                out.append(await psub.next_msg(timeout=timeout))
            except Exception:
                return out
            timeout = 0.5
    finally:
        await psub.unsubscribe()


async def test_an_event_published_while_nats_is_down_is_not_lost(
        stack, api, nats_server, bus_config, uid):
    """The outbox keeps what nats-server did not acknowledge and sends it once it is back,
    in order, each event with its id in ``Nats-Msg-Id``; services' own events too."""
    from shared.bus import Bus
    from shared.events import ID_HEADER, Events
    from tests.stack import wait_for

    own = await Bus(bus_config, "tests-outbox").connect()
    events = Events(own)
    try:
        await events.publish("lifecycle", {"action": "test-before", "source": uid},
                             entity="outboxtest")
        await asyncio.to_thread(nats_server.stop)
        for _ in range(100):
            if not own.nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert not own.nc.is_connected
        for n in range(3):  # returns at once: nothing waits for the server
            await asyncio.wait_for(events.publish(
                "lifecycle", {"action": f"test-down-{n}", "source": uid},
                entity="outboxtest"), 1)
        await asyncio.to_thread(nats_server.start)
        for _ in range(300):  # drain waits only once the bus is back
            if await events.drain(1) == 0:
                break
            await asyncio.sleep(0.1)
        assert await events.drain(0) == 0
        msgs = await _stream_events(own, "corral.events.lifecycle.default.outboxtest")
        mine = [m for m in msgs if json.loads(m.data)["metadata"]["source"] == uid]
        assert [json.loads(m.data)["metadata"]["action"] for m in mine] == \
            ["test-before", "test-down-0", "test-down-1", "test-down-2"]
        ids = [m.headers[ID_HEADER] for m in mine]
        assert len(set(ids)) == 4 and all(len(i) == 36 for i in ids)
        # The instance service said it lost the bus: a logging event made while it was
        # away, in the stream now.
        logs = await _stream_events(own, "corral.events.logging.default.instance")
        assert any(json.loads(m.data)["metadata"]["message"] == "nats disconnected"
                   for m in logs)
    finally:
        await own.close()
        # The next tests share this stack: leave it only when a KV write works again.
        wait_for(lambda: api.post("/1.0/profiles", json={"name": uid}).status_code == 200,
                 60, what="KV writes to work after the nats-server restart")
        api.delete(f"/1.0/profiles/{uid}")


async def test_the_same_event_id_is_stored_once(bus, uid):
    """A resend after a lost acknowledgement (same id) does not make a second event."""
    from shared.events import ID_HEADER, outbox

    box = outbox(bus)
    data = json.dumps({"type": "lifecycle", "metadata": {"source": uid}}).encode()
    for _ in range(2):
        await box._publish("corral.events.lifecycle.default.dedupetest", data, uid)
    msgs = await _stream_events(bus, "corral.events.lifecycle.default.dedupetest")
    assert [m.headers[ID_HEADER] for m in msgs].count(uid) == 1
