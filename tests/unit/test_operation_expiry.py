"""The gateway's expiry of finished operations reads each record once, not every round.

After a burst (1000 instances made in a cluster bench) every gateway read each of the
thousands of operations every 30 s, a KV round trip apiece, on the event loop a
``corral-all`` process shares with every service: a cluster move made then was slowed by
the number of records. The KV reads are counted here (no timing)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.models import lxd_time

from .test_operation_owners import OLD, make, record


def _with_delete(ops: Any) -> None:
    store = ops.store
    store.deleted = []
    store.purged = 0

    async def delete(k: str) -> None:
        store.deleted.append(k)
        store.data.pop(k, None)

    async def forget_deleted(older_than: float = 60.0) -> None:
        store.purged += 1

    async def items() -> dict[str, dict[str, Any]]:  # as Store's: a KV read per key
        store.reads.extend(store.data)
        return {k: v for k, (v, _r) in store.data.items()}

    store.delete = delete
    store.forget_deleted = forget_deleted
    store.items = items


def test_expiry_reads_a_finished_operation_once_and_deletes_it_when_old() -> None:
    ops = make()
    _with_delete(ops)
    old = lxd_time(datetime.now(timezone.utc) - timedelta(seconds=700))
    for i in range(200):
        ops.store.data[f"done{i}"] = (record(f"done{i}", OLD, "Success"), 1)
    ops.store.data["stale"] = (record("stale", OLD, "Failure", updated_at=old), 1)
    ops.store.data["run"] = (record("run", OLD, updated_at=old), 1)

    async def rounds() -> tuple[list[str], list[str], int]:
        await ops.fail_orphans()  # the gateway's sweep, then the expiry, each round
        first = await ops.expire()
        ops.store.reads.clear()
        await ops.fail_orphans()
        second = await ops.expire()
        return list(ops.store.reads), list(ops.store.deleted), first + second

    reads, deleted, gone = asyncio.run(rounds())
    assert set(reads) == {"run"}  # only the unfinished one, not the 200 finished ones
    assert deleted == ["stale"] and gone == 1 and ops.store.purged == 1
    assert "run" in ops.store.data  # an unfinished operation never expires


def test_expiry_alone_reads_what_it_has_not_seen_and_skips_what_another_deleted() -> None:
    ops = make()
    _with_delete(ops)
    old = lxd_time(datetime.now(timezone.utc) - timedelta(seconds=700))
    ops.store.data["a"] = (record("a", OLD, "Success", updated_at=old), 1)
    ops.store.data["b"] = (record("b", OLD, "Success", updated_at=old), 1)
    asyncio.run(ops._read_unfinished(["a", "b"]))  # both seen finished, then b is deleted
    del ops.store.data["b"]  # by another gateway (its key stays listed until purged)
    ops.store.data["c"] = (record("c", OLD, "Success", updated_at=old), 1)

    async def expire_listing_b() -> int:
        ops.store._all_keys = lambda: _keys(["a", "b", "c"])  # type: ignore[method-assign]
        return await ops.expire()

    assert asyncio.run(expire_listing_b()) == 2
    assert sorted(ops.store.deleted) == ["a", "c"]


async def _keys(keys: list[str]) -> list[str]:
    return keys
