"""Operations end when their process dies: the owner rules, over a fake store and fake pings.

What matters: a restarted service fails only its own earlier incarnation's unfinished
operations on its node; a gateway fails an operation only once its owner has been missing
for the grace period (a nats-server restart is not a death), and an ownerless one only
when old; a stopping service fails (not cancels) what it runs, after its undo ran; and a
bus error under an operation reads as a 503 that says so.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from shared import operations
from shared.bus import bus_error
from shared.errors import Conflict, Unavailable
from shared.models import lxd_time
from shared.operations import Operations


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, tuple[dict[str, Any], int]] = {}
        self.reads: list[str] = []

    async def items(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, (v, _r) in self.data.items()}

    async def _all_keys(self) -> list[str]:
        return list(self.data)

    async def get(self, k: str):
        self.reads.append(k)
        return self.data.get(k)

    async def put(self, k: str, v: dict[str, Any]) -> int:
        rev = self.data.get(k, ({}, 0))[1] + 1
        self.data[k] = (v, rev)
        return rev

    async def create(self, k: str, v: dict[str, Any], what: str = "") -> int:
        if k in self.data:
            raise Conflict("exists")
        return await self.put(k, v)

    async def update(self, k: str, v: dict[str, Any], rev: int) -> int:
        if self.data[k][1] != rev:
            raise Conflict("changed")
        return await self.put(k, v)


class FakeEvents:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def publish(self, kind: str, metadata: dict[str, Any], **_kw: Any) -> None:
        self.sent.append(metadata)

    def post(self, kind: str, metadata: dict[str, Any], **_kw: Any) -> None:
        """Operations.start posts its created/running events (not awaited)."""
        self.sent.append(metadata)


def make(alive: dict[str, bool] | None = None) -> Operations:
    bus = SimpleNamespace(config=SimpleNamespace(operation_retention=600), nc=None)
    ops = Operations(bus, FakeEvents())  # type: ignore[arg-type]
    ops.store = FakeStore()  # type: ignore[assignment]
    status = alive if alive is not None else {}

    async def owner_alive(owner: dict[str, str]) -> bool:
        return status.get(owner["id"], True)

    ops.owner_alive = owner_alive  # type: ignore[method-assign]
    return ops


def record(op_id: str, owner: dict[str, str] | None, status: str = "Running",
           updated_at: str | None = None) -> dict[str, Any]:
    return {"id": op_id, "status": status, "status_code": 103, "err": "",
            "updated_at": updated_at or lxd_time(), "project": "default", "owner": owner}


OLD = {"service": "corral-instance", "node": "n1", "id": "old"}


def run(coro):
    return asyncio.run(coro)


def test_claim_fails_only_the_earlier_incarnation_of_the_same_service_and_node() -> None:
    ops = make()
    for op_id, owner in (("a", OLD), ("b", {**OLD, "node": "n2"}),
                         ("c", {**OLD, "service": "corral-image"}), ("d", {**OLD, "id": "new"})):
        ops.store.data[op_id] = (record(op_id, owner), 1)
    ops.store.data["e"] = (record("e", OLD, status="Success"), 1)

    assert run(ops.claim("corral-instance", "n1", "new")) == 1
    a = ops.store.data["a"][0]
    assert a["status"] == "Failure" and "instance service restarted" in a["err"]
    assert [ops.store.data[k][0]["status"] for k in "bcde"] == \
        ["Running", "Running", "Running", "Success"]
    assert ops.events.sent[0]["id"] == "a" and "owner" not in ops.events.sent[0]
    assert ops.owner == {"service": "corral-instance", "node": "n1", "id": "new"}


def test_gateway_fails_an_operation_only_after_its_owner_is_missing_for_the_grace(
        monkeypatch) -> None:
    alive = {"old": False}
    ops = make(alive)
    ops.store.data["a"] = (record("a", OLD), 1)
    clock = [1000.0]
    monkeypatch.setattr(operations.time, "monotonic", lambda: clock[0])
    assert run(ops.fail_orphans()) == 0  # first miss: maybe a reconnect
    clock[0] += operations.OWNER_GRACE / 2
    assert run(ops.fail_orphans()) == 0
    alive["old"] = True  # it came back: the clock starts again
    assert run(ops.fail_orphans()) == 0
    alive["old"] = False
    clock[0] += 1
    assert run(ops.fail_orphans()) == 0
    clock[0] += operations.OWNER_GRACE + 1
    assert run(ops.fail_orphans()) == 1
    a = ops.store.data["a"][0]
    assert a["status"] == "Failure" and "process is gone" in a["err"]


def test_an_ownerless_operation_fails_only_when_old() -> None:
    ops = make()
    ops.store.data["new"] = (record("new", None), 1)
    ops.store.data["old"] = (record("old", None, updated_at="2020-01-01T00:00:00Z"), 1)
    assert run(ops.fail_orphans()) == 1
    assert ops.store.data["old"][0]["status"] == "Failure"
    assert ops.store.data["new"][0]["status"] == "Running"


def test_fail_leaves_an_operation_its_owner_just_finished() -> None:
    ops = make()
    ops.store.data["a"] = (record("a", OLD, status="Success"), 3)
    assert not run(ops._fail("a", "gone"))
    assert ops.store.data["a"][0]["status"] == "Success"


def test_stopping_fails_running_operations_after_their_undo() -> None:
    async def scenario() -> tuple[dict[str, Any], list[str]]:
        ops = make()
        await ops.claim("corral-instance", "n1", "me")
        steps: list[str] = []

        async def work(_handle) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                steps.append("undo")
                raise

        op = await ops.start("Creating instance", work)
        await asyncio.sleep(0)
        await ops.shutdown(timeout=5)
        return ops.store.data[op.id][0], steps

    rec, steps = run(scenario())
    assert steps == ["undo"]
    assert rec["status"] == "Failure" and "instance service stopped" in rec["err"]


@pytest.mark.parametrize("exc", [nats.errors.TimeoutError(), nats.errors.ConnectionClosedError()])
def test_bus_errors_under_an_operation_are_a_503_that_says_so(exc) -> None:
    err = bus_error(exc)
    assert isinstance(err, Unavailable) and "message bus" in err.message
    plain = ValueError("bug")
    assert bus_error(plain) is plain


def test_reading_an_operation_while_the_bus_restarts_is_a_503() -> None:
    ops = make()

    async def broken(_k: str):
        raise nats.errors.TimeoutError()

    ops.store.get = broken  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="message bus"):
        run(ops.get("0b5b3c4e-8f0e-4d7b-9a53-1d2f3e4a5b6c"))


def test_the_orphan_sweep_reads_a_finished_operation_once():
    """Every 2 s the gateway sweeps; finished operations stay for the retention, and
    reading each of them every round cost a KV round trip apiece (most of the gateway's
    CPU after a burst of execs). A finished record never changes: read once."""
    ops = make()
    for i in range(50):
        ops.store.data[f"done{i}"] = (record(f"done{i}", OLD, "Success"), 1)
    ops.store.data["run"] = (record("run", OLD), 1)

    async def sweep_twice() -> list[str]:
        await ops.fail_orphans()
        ops.store.reads.clear()
        await ops.fail_orphans()
        return list(ops.store.reads)

    assert asyncio.run(sweep_twice()) == ["run"]  # the running one only, each round
    del ops.store.data["done0"]  # expired and deleted: forgotten here too
    asyncio.run(ops.fail_orphans())
    assert "done0" not in ops._finished


def test_a_finished_operation_seen_in_its_event_is_read_from_memory():
    """The gateway feeds final events to remember_final: lxc exec's read of the exit code
    then needs no KV round trip; an unfinished or expired one still reads the record."""
    ops = make()
    op_id = "6f1c0c8e-1c1e-4d8a-9a59-6f1a8f0d2b11"
    ops.store.data[op_id] = (record(op_id, OLD, "Success"), 1)
    ops.remember_final({**record(op_id, None, "Running"), "owner": None})
    asyncio.run(ops.get(op_id))
    assert ops.store.reads == [op_id]  # a Running event is not remembered
    final = {k: v for k, v in record(op_id, None, "Success").items()
             if k not in ("project", "owner")}
    ops.remember_final({**final, "metadata": {"return": 3}})
    ops.store.reads.clear()
    got = asyncio.run(ops.get(op_id))
    assert got["metadata"] == {"return": 3} and ops.store.reads == []
    ops.retention = 3600  # expired: forgotten, and the record decides (here: still there)
    ops.remember_final({**final, "updated_at": "2000-01-01T00:00:00Z"})
    asyncio.run(ops.get(op_id))
    assert ops.store.reads == [op_id] and op_id not in ops._final_seen
    # Remembered a while ago: the shared record decides again (another replica may have
    # deleted it), so every reader sees the same.
    ops.retention = 10**9  # not expired: only FINAL_SEEN_TTL matters below
    ops.remember_final({**final, "metadata": {"return": 4}})
    at, op = ops._final_seen[op_id]
    ops._final_seen[op_id] = (at - operations.FINAL_SEEN_TTL - 1, op)
    ops.store.reads.clear()
    asyncio.run(ops.get(op_id))
    assert ops.store.reads == [op_id] and op_id not in ops._final_seen


def test_finished_operations_are_forgotten_once_their_reads_are_over(monkeypatch):
    """remember_final keeps a final state FINAL_SEEN_TTL seconds (what get() answers
    from), not until FINAL_SEEN_LIMIT newer ones push it out: after a burst of
    operations the gateway would hold thousands of them for nothing."""
    clock = [1000.0]
    monkeypatch.setattr(operations.time, "monotonic", lambda: clock[0])
    ops = make()
    ids = [f"6f1c0c8e-1c1e-4d8a-9a59-6f1a8f0d{i:04x}" for i in range(50)]
    final = {k: v for k, v in record(ids[0], None, "Success").items()
             if k not in ("project", "owner")}
    for op_id in ids:
        ops.remember_final({**final, "id": op_id})
    assert list(ops._final_seen) == ids
    clock[0] += operations.FINAL_SEEN_TTL / 2
    ops.remember_final({**final, "id": ids[0]})  # seen again: kept, now the newest
    clock[0] += operations.FINAL_SEEN_TTL / 2 + 0.1
    ops.remember_final({**final, "id": "6f1c0c8e-1c1e-4d8a-9a59-6f1a8f0dffff"})
    assert list(ops._final_seen) == [ids[0], "6f1c0c8e-1c1e-4d8a-9a59-6f1a8f0dffff"]
    monkeypatch.setattr(operations, "FINAL_SEEN_LIMIT", 1)  # the limit still holds
    ops.remember_final({**final, "id": ids[1]})
    assert list(ops._final_seen) == [ids[1]]
