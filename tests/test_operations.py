"""Operations: created by whichever process runs the work, answered by any gateway."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import pytest

from shared.errors import BadRequest
from shared.events import Events
from shared.operations import Operations

from .stack import BIN, stop_pid, wait_for


@pytest.fixture(scope="module")
async def ops(bus):
    return await Operations(bus, Events(bus)).open()


async def test_operation_progress_wait_and_success(ops, aapi):
    release = asyncio.Event()

    async def work(handle):
        await handle.progress("unpack", 42, speed=1000)
        await release.wait()
        return {"return": 0}

    op = await ops.start("Testing things", work, resources={"instances": ["/1.0/instances/x"]})
    assert op.status == "Running" and op.status_code == 103

    async def shows_progress():
        r = await aapi.get(f"/1.0/operations/{op.id}")
        return (r.json()["metadata"]["metadata"] or {}).get("progress", {}).get("percent")

    for _ in range(100):
        if await shows_progress() == "42":
            break
        await asyncio.sleep(0.02)
    body = (await aapi.get(f"/1.0/operations/{op.id}")).json()["metadata"]
    assert body["status"] == "Running"
    assert body["metadata"]["unpack_progress"] == "42%"
    assert body["resources"] == {"instances": ["/1.0/instances/x"]}
    assert set(body) == {"id", "class", "description", "created_at", "updated_at", "status",
                         "status_code", "resources", "metadata", "may_cancel", "err",
                         "location"}

    # A wait with a short timeout returns the operation as it is.
    r = await aapi.get(f"/1.0/operations/{op.id}/wait", params={"timeout": "0.2"})
    assert r.json()["metadata"]["status"] == "Running"

    waiter = asyncio.create_task(aapi.get(f"/1.0/operations/{op.id}/wait",
                                          params={"timeout": "30"}))
    await asyncio.sleep(0.1)
    release.set()
    done = (await waiter).json()["metadata"]
    assert done["status"] == "Success" and done["status_code"] == 200
    assert done["metadata"]["return"] == 0

    listing = (await aapi.get("/1.0/operations")).json()["metadata"]
    assert f"/1.0/operations/{op.id}" in listing["success"]
    full = (await aapi.get("/1.0/operations", params={"recursion": 1})).json()["metadata"]
    assert any(o["id"] == op.id for o in full["success"])


async def test_operation_failure_keeps_the_error(ops, aapi):
    async def work(handle):
        raise BadRequest("Image 'nope' not found on any remote")

    op = await ops.start("Failing on purpose", work)
    r = await aapi.get(f"/1.0/operations/{op.id}/wait", params={"timeout": "10"})
    meta = r.json()["metadata"]
    assert meta["status"] == "Failure" and meta["status_code"] == 400
    assert meta["err"] == "Image 'nope' not found on any remote"


async def test_cancel_a_cancellable_operation(ops, aapi):
    async def work(handle):
        await asyncio.sleep(60)

    op = await ops.start("Long and cancellable", work, may_cancel=True)
    r = await aapi.delete(f"/1.0/operations/{op.id}")
    assert r.status_code == 200, r.text
    meta = (await aapi.get(f"/1.0/operations/{op.id}")).json()["metadata"]
    assert meta["status"] == "Cancelled" and meta["status_code"] == 401
    # Cancelling again: it is over.
    assert (await aapi.delete(f"/1.0/operations/{op.id}")).status_code == 400


async def test_cannot_cancel_an_uncancellable_operation(ops, aapi):
    release = asyncio.Event()

    async def work(handle):
        await release.wait()

    op = await ops.start("Not cancellable", work)
    r = await aapi.delete(f"/1.0/operations/{op.id}")
    assert r.status_code == 403
    release.set()
    await ops.wait_local(op.id)


async def test_unknown_and_malformed_operation_ids_are_404(aapi):
    for op_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        r = await aapi.get(f"/1.0/operations/{op_id}")
        assert r.status_code == 404 and r.json()["error"] == "Operation not found"
    r = await aapi.get("/1.0/operations/00000000-0000-0000-0000-000000000000/wait",
                       params={"timeout": "soon"})
    assert r.status_code == 400


async def test_finished_operations_expire_after_the_retention(ops, aapi, stack, tmp_path):
    """A second gateway (replicas share nothing but the bus) with a 1 s retention."""
    async def work(handle):
        return None

    op = await ops.start("Short lived", work)
    await ops.wait_local(op.id)
    await asyncio.sleep(1.2)
    # The session's gateway keeps finished operations for 10 minutes.
    assert (await aapi.get(f"/1.0/operations/{op.id}")).status_code == 200
    env = {**stack.env, "CORRAL_DIR": str(tmp_path), "CORRAL_OPERATION_RETENTION": "1",
           "CORRAL_NATS_CREDENTIALS": str(stack.nats.credentials("gateway"))}
    proc = subprocess.Popen([str(BIN / "corral-gateway")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = str(tmp_path / "unix.socket")
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock),
                                     base_url="http://corral") as short:
            await asyncio.to_thread(wait_for, lambda: (tmp_path / "unix.socket").exists(), 30)
            r = await short.get(f"/1.0/operations/{op.id}")
            assert r.status_code == 404
            # The short gateway's sweep deletes it from the shared bucket, for every reader.
            for _ in range(100):
                if (await aapi.get(f"/1.0/operations/{op.id}")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            assert (await aapi.get(f"/1.0/operations/{op.id}")).status_code == 404
    finally:
        await asyncio.to_thread(stop_pid, proc)


async def test_finished_waits_leave_no_consumer_on_the_server(ops, aapi, bus):
    """Each wait watches the operation's KV key through an ephemeral JetStream consumer.
    Stopping the watcher only unsubscribes: with nats-py's default the server kept each
    consumer 5 minutes, hundreds after a burst (tens of MiB of nats-server's memory)."""
    js = bus.js

    async def consumers() -> int:
        return (await js.stream_info("KV_operations")).state.consumer_count

    before = await consumers()
    release = asyncio.Event()

    async def work(handle):
        await release.wait()
        return {}

    started = [await ops.start("Waited on", work) for _ in range(5)]
    waits = [asyncio.create_task(aapi.get(f"/1.0/operations/{op.id}/wait",
                                          params={"timeout": "30"})) for op in started]
    await asyncio.sleep(0.3)
    release.set()
    for w in waits:
        assert (await w).json()["metadata"]["status"] == "Success"
    # well before nats-py's 5 minutes: the consumers of the finished waits are gone
    for _ in range(150):
        if await consumers() <= before:
            break
        await asyncio.sleep(0.1)
    assert await consumers() <= before
