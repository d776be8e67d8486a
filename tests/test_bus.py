"""The services on the bus: discovery, stats, 503 when one is down, NATS restarts."""

from __future__ import annotations

import asyncio
import json
import time

import nats.errors
import pytest

from shared.bus import Bus
from shared.errors import BadRequest, Unavailable
from shared.models import ListRequest, Message, Reply
from shared.service import Service, endpoint

from .stack import wait_for

ALL = {"corral-image", "corral-instance", "corral-storage", "corral-network",
       "corral-migration", "corral-hooks", "corral-gateway"}


async def gather_replies(bus: Bus, subject: str, wait: float = 0.5) -> list[dict]:
    """Publish once and collect every reply (discovery answers come from each service)."""
    inbox = bus.nc.new_inbox()
    replies: list[dict] = []

    async def on_msg(msg):
        replies.append(json.loads(msg.data))

    sub = await bus.nc.subscribe(inbox, cb=on_msg)
    await bus.nc.publish(subject, b"", reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return replies


async def test_srv_ping_finds_every_service_and_the_gateway(bus, stack):
    names: set[str] = set()
    for _ in range(20):  # the migration service may still be starting
        names = {r["name"] for r in await gather_replies(bus, "$SRV.PING")}
        if ALL <= names:
            break
    assert ALL <= names


async def test_srv_info_lists_subjects(bus, stack):
    infos = {r["name"]: r for r in await gather_replies(bus, "$SRV.INFO")}
    subjects = {e["subject"] for e in infos["corral-instance"]["endpoints"]}
    assert "corral.instance.list" in subjects
    assert "corral.instance.profile_create" in subjects


async def test_srv_stats_counts_requests(bus, aapi):
    def count(stats):
        [s] = [s for s in stats if s["name"] == "corral-image"]
        return next(e["num_requests"] for e in s["endpoints"] if e["name"] == "list")

    before = count(await gather_replies(bus, "$SRV.STATS.corral-image"))
    for _ in range(3):
        assert (await aapi.get("/1.0/images")).status_code == 200
    after = count(await gather_replies(bus, "$SRV.STATS.corral-image"))
    assert after - before == 3


async def test_srv_stats_counts_errors_and_time(bus, aapi, uid):
    def endpoint(stats):
        [s] = [s for s in stats if s["name"] == "corral-instance"]
        return next(e for e in s["endpoints"] if e["name"] == "profile_get")

    before = endpoint(await gather_replies(bus, "$SRV.STATS.corral-instance"))
    assert (await aapi.get(f"/1.0/profiles/{uid}")).status_code == 404
    after = endpoint(await gather_replies(bus, "$SRV.STATS.corral-instance"))
    assert after["num_errors"] == before["num_errors"] + 1
    assert after["last_error"] == "404: Profile not found"
    assert after["processing_time"] > before["processing_time"]


class NapRequest(Message):
    seconds: float = 0.0
    fail: bool = False
    bus_lost: bool = False  # act as if the bus went away under the request


class Napper(Service):
    """A service whose one endpoint sleeps as long as it is told, or fails."""

    name = "statsprobe"

    @endpoint("nap", NapRequest)
    async def nap(self, req: NapRequest) -> Reply:
        await asyncio.sleep(req.seconds)
        if req.fail:
            raise BadRequest("Told to fail")
        if req.bus_lost:
            raise nats.errors.ConnectionClosedError()
        return Reply(metadata={"slept": req.seconds})


async def test_srv_stats_count_concurrent_requests_by_the_time_they_took(bus, bus_config):
    """Requests of one endpoint run concurrently, and $SRV.STATS still says how long they
    took and which failed (nats.micro alone would time only the start of each task)."""
    svc = Napper(bus_config, bus)
    await svc.start()
    try:
        t0 = time.monotonic()
        await asyncio.gather(*(bus.request("statsprobe", "nap", NapRequest(seconds=0.4))
                               for _ in range(2)))
        assert time.monotonic() - t0 < 0.75  # concurrent, not one after the other
        with pytest.raises(BadRequest):
            await bus.request("statsprobe", "nap", NapRequest(seconds=0.1, fail=True))
        [stats] = [s for s in await gather_replies(bus, "$SRV.STATS.corral-statsprobe")
                   if s["id"] == svc._micro.id]
        [nap] = [e for e in stats["endpoints"] if e["name"] == "nap"]
        assert nap["num_requests"] == 3
        assert nap["num_errors"] == 1 and nap["last_error"] == "400: Told to fail"
        assert nap["processing_time"] >= 0.9e9  # 0.4 + 0.4 + 0.1 s of work
        assert nap["average_processing_time"] >= 0.3e9
        assert nap["data"] == {"in_flight": 0, "completed": 3}
    finally:
        await svc.stop()


async def test_a_bus_error_under_a_request_is_a_503_not_a_500(bus, bus_config):
    """A KV write or request that the bus drops under a synchronous request is "the bus did
    not answer, retry" (503), not "Internal error" (500)."""
    svc = Napper(bus_config, bus)
    await svc.start()
    try:
        with pytest.raises(Unavailable) as exc:
            await bus.request("statsprobe", "nap", NapRequest(bus_lost=True))
        assert exc.value.code == 503 and "message bus" in exc.value.message
    finally:
        await svc.stop()


async def test_bus_request_to_missing_service_is_unavailable(bus):
    with pytest.raises(Unavailable) as exc:
        await bus.request("nosuchservice", "list", ListRequest(), timeout=0.5)
    assert exc.value.code == 503
    assert "nosuchservice" in exc.value.message


def test_stopped_service_gives_503_then_recovers_with_data(api, stack, uid):
    assert api.post("/1.0/profiles", json={"name": uid}).status_code == 200
    time.sleep(2.5)  # past the gateway's cache of the services' part of GET /1.0
    api.get("/1.0")
    wait_for(lambda: "api_filtering" in api.get("/1.0").json()["metadata"]["api_extensions"],
             10, what="the instance service's extensions in GET /1.0")
    stack.stop("instance")
    try:
        t0 = time.monotonic()
        r = api.get("/1.0/profiles")
        assert r.status_code == 503
        assert "instance" in r.json()["error"]
        assert time.monotonic() - t0 < 10  # bounded by the request timeout, never a hang
        # GET /1.0 still answers: clients call it first. And it still names the extensions
        # the instance service declared (lxc refuses `list` without api_filtering), also
        # after the gateway's cache of the services' answers was refreshed.
        assert api.get("/1.0").status_code == 200
        time.sleep(2.5)
        for _ in range(2):  # the first read triggers the refresh, the second sees it
            exts = api.get("/1.0").json()["metadata"]["api_extensions"]
            time.sleep(0.3)
        assert "api_filtering" in exts
    finally:
        stack.start("instance")
    wait_for(lambda: api.get("/1.0/profiles").status_code == 200, 30, what="instance back")
    names = api.get("/1.0/profiles").json()["metadata"]
    assert f"/1.0/profiles/{uid}" in names
    api.delete(f"/1.0/profiles/{uid}")


async def test_a_service_stops_promptly_and_cleanly(bus, stack):
    """SIGTERM: the service stops cleanly (bus drained, its last log line written, exit
    status 0) although it leaves without the interpreter's finalization, which took 1-2.5 s
    per process under load (shared/service.py run_process; tests/unit/test_service_exit.py
    checks the finalization is skipped). No timing asserted: a test never does."""
    proc = stack.procs["hooks"]
    log = stack.log_path("hooks")
    try:
        stack.stop("hooks")
        assert proc.returncode == 0
        last = json.loads(log.read_text().strip().splitlines()[-1])
        assert last["event"] == "nats disconnected"  # the bus closed, the stream flushed
    finally:
        stack.start("hooks")
    for _ in range(60):  # back on the bus for the tests after this one
        if "corral-hooks" in {r["name"] for r in await gather_replies(bus, "$SRV.PING")}:
            break
    else:
        raise AssertionError("the hooks service did not come back")


def test_services_reconnect_after_nats_restart(api, stack, nats_server, uid):
    assert api.post("/1.0/profiles", json={"name": uid}).status_code == 200
    nats_server.stop()
    assert api.get("/1.0/profiles").status_code == 503
    nats_server.start()  # same port, same JetStream store
    wait_for(lambda: api.get(f"/1.0/profiles/{uid}").status_code == 200, 60,
             what="services to reconnect to the restarted nats-server")
    # Reads come from the services' caches at once; writes need JetStream back too. The
    # next tests share this stack: leave it only when a KV write works again.
    wait_for(lambda: api.patch(f"/1.0/profiles/{uid}", json={"description": "back"}
                               ).status_code == 200, 60,
             what="KV writes to work after the nats-server restart")
    assert api.get("/1.0/images").status_code == 200
    assert api.delete(f"/1.0/profiles/{uid}").status_code == 200
