"""``lxc exec`` answers without waiting for its events, and loses none of what users rely on.

The exec's POST waits for the operation's record only: the ``instance-exec`` lifecycle
event and the operation's created/running events are posted to the outbox (sent in order,
not awaited). These tests hold the promises that must survive that: every event comes, in
order (lifecycle, Pending, Running, Success), the final record is there when its event
is, with the exit code; the websockets find their secrets; the attach helper's kept
liblxc handle follows a restarted container.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from .world import lxc, make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or shutil.which("lxc") is None or not Path("/bin/busybox").exists():
    pytest.skip("needs root, Debian's lxd-client and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.run = w.create("run", start=True)
        yield w


async def _events_during(stack, fn, want_final: int = 1) -> list[dict]:
    """The lifecycle and operation events seen on a websocket while ``fn`` (blocking)
    runs, until it returned and ``want_final`` exec operations reached a final status."""
    connector = aiohttp.UnixConnector(path=str(stack.socket))
    seen: list[dict] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(
                "http://corral/1.0/events?type=lifecycle,operation") as ws:
            task = asyncio.ensure_future(asyncio.to_thread(fn))
            finals = 0
            deadline = asyncio.get_running_loop().time() + 60
            while finals < want_final or not task.done():
                assert asyncio.get_running_loop().time() < deadline, seen
                try:
                    msg = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                event = json.loads(msg.data)
                seen.append(event)
                meta = event["metadata"]
                if event["type"] == "operation" and meta["description"] == \
                        "Executing command" and meta["status"] in ("Success", "Failure"):
                    finals += 1
            await task
    return seen


async def test_exec_events_come_in_order_and_the_final_record_has_the_exit_code(
        stack, api, world):
    """Through the stock client: the exit code, then the events of that exec in order
    (the lifecycle event first, then Pending, Running, Success with ``return``), and the
    operation read back says the same."""
    codes = []

    def run() -> None:
        r = lxc(stack, "exec", world.run, "--", "sh", "-c", "echo out; exit 7", check=False)
        codes.append((r.returncode, r.stdout))

    events = await _events_during(stack, run)
    assert codes == [(7, "out\n")]
    source = f"/1.0/instances/{world.run}"
    execs = [i for i, e in enumerate(events) if e["type"] == "lifecycle"
             and e["metadata"]["action"] == "instance-exec"
             and e["metadata"]["source"] == source]
    assert len(execs) == 1, events
    ops = [(i, e["metadata"]) for i, e in enumerate(events) if e["type"] == "operation"
           and e["metadata"]["description"] == "Executing command"]
    assert [m["status"] for _, m in ops] == ["Pending", "Running", "Success"], ops
    assert execs[0] < ops[0][0]  # the lifecycle event was queued first
    final = ops[-1][1]
    assert final["metadata"]["return"] == 7
    read = api.get(f"/1.0/operations/{final['id']}").json()["metadata"]
    assert read["status"] == "Success" and read["metadata"]["return"] == 7


async def test_many_execs_at_once_each_get_their_events_and_exit_code(stack, world):
    """Eight execs at once (their events interleave in one outbox): each client gets its
    own exit code and every operation its three events, in order."""
    codes: dict[int, int] = {}

    def run_all() -> None:
        import concurrent.futures

        def one(n: int) -> None:
            r = lxc(stack, "exec", world.run, "--", "sh", "-c", f"exit {n}", check=False)
            codes[n] = r.returncode

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))

    events = await _events_during(stack, run_all, want_final=8)
    assert codes == {n: n for n in range(8)}
    by_op: dict[str, list[str]] = {}
    for e in events:
        if e["type"] == "operation" and e["metadata"]["description"] == "Executing command":
            by_op.setdefault(e["metadata"]["id"], []).append(e["metadata"]["status"])
    assert len(by_op) == 8
    assert all(s == ["Pending", "Running", "Success"] for s in by_op.values()), by_op


def test_exec_after_a_restart_a_config_change_a_pause_and_a_stop(stack, world):
    """The attach helper keeps each container's liblxc handle while its config file is
    unchanged: after a restart (new init) and a config change it still attaches into the
    running container, with the new settings."""
    assert lxc(stack, "exec", world.run, "--", "echo", "one").stdout == "one\n"
    before = lxc(stack, "exec", world.run, "--", "cat", "/proc/1/stat").stdout.split()[21]
    lxc(stack, "restart", "--force", world.run)
    after = lxc(stack, "exec", world.run, "--", "cat", "/proc/1/stat").stdout.split()[21]
    assert after != before  # a new init: the attach went into the new container
    lxc(stack, "config", "set", world.run, "environment.H2_MARK", "kept")
    r = lxc(stack, "exec", world.run, "--", "sh", "-c", "echo $H2_MARK; exit 3", check=False)
    assert (r.returncode, r.stdout) == (3, "kept\n")
    lxc(stack, "config", "unset", world.run, "environment.H2_MARK")
    # A frozen container is refused (and the attach helper is not left stuck attaching
    # into it), a stopped one too.
    lxc(stack, "pause", world.run)
    r = lxc(stack, "exec", world.run, "--", "true", check=False)
    assert r.returncode != 0 and "frozen" in r.stderr.lower(), r.stderr
    lxc(stack, "start", world.run)  # unpause
    assert lxc(stack, "exec", world.run, "--", "echo", "thawed").stdout == "thawed\n"
    lxc(stack, "stop", "--force", world.run)
    r = lxc(stack, "exec", world.run, "--", "true", check=False)
    assert r.returncode != 0 and "not running" in r.stderr.lower(), r.stderr
    lxc(stack, "start", world.run)
    assert lxc(stack, "exec", world.run, "--", "echo", "back").stdout == "back\n"


async def test_posted_events_keep_their_order_with_awaited_ones(bus, uid):
    """``Outbox.post`` returns at once; what is sent after it (awaited or posted) comes
    after it, on a live subscription and in the stream."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from shared import subjects
    from shared.events import Events

    subject = f"corral.events.lifecycle.default.{uid}"
    live: list[str] = []

    async def on_msg(msg) -> None:
        live.append(json.loads(msg.data)["metadata"]["action"])

    sub = await bus.subscribe(subject, on_msg)
    events = Events(bus)
    try:
        assert events.post("lifecycle", {"action": "a", "source": uid}, entity=uid) \
            is not None  # not a coroutine: nothing to await
        await events.publish("lifecycle", {"action": "b", "source": uid}, entity=uid)
        events.post_lifecycle(f"{uid}-c", "/1.0")
        events.post("lifecycle", {"action": "d", "source": uid}, entity=uid)
        assert await events.drain(5) == 0
        await bus.nc.flush()
        for _ in range(50):
            if len(live) == 4:
                break
            await asyncio.sleep(0.05)
        assert live == ["a", "b", f"{uid}-c", "d"]
        psub = await bus.js.subscribe(subject, stream=subjects.EVENTS_STREAM,
                                      ordered_consumer=True, config=ConsumerConfig(
                                          deliver_policy=DeliverPolicy.ALL))
        try:
            stored = [json.loads((await psub.next_msg(timeout=5)).data)["metadata"]["action"]
                      for _ in range(4)]
        finally:
            await psub.unsubscribe()
        assert stored == live
        # Sent while another is on its way: queued at once, so a post that follows it
        # comes after it (it does not wait for the lock and lose its place).
        first = asyncio.ensure_future(events.publish(
            "lifecycle", {"action": "e", "source": uid}, entity=uid))
        await asyncio.sleep(0)  # "e" is on its way, awaiting its acknowledgement
        second = asyncio.ensure_future(events.publish(
            "lifecycle", {"action": "f", "source": uid}, entity=uid))
        await asyncio.sleep(0)
        events.post("lifecycle", {"action": "g", "source": uid}, entity=uid)
        await asyncio.gather(first, second)
        assert await events.drain(5) == 0
        await bus.nc.flush()
        for _ in range(50):
            if len(live) == 7:
                break
            await asyncio.sleep(0.05)
        assert live[4:] == ["e", "f", "g"]
    finally:
        await sub.unsubscribe()
