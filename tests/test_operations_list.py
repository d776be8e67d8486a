"""Listing operations reads a finished one once (shared/operations.py ``list``): a running
operation's changes are seen on every listing, a finished one is served as it ended, and
one past the retention leaves the listing; the gateway's
GET /1.0/operations shows the same."""

from __future__ import annotations

import asyncio

from shared.events import Events
from shared.operations import Operations


async def test_running_then_finished_then_gone(bus, aapi):
    ops = await Operations(bus, Events(bus)).open()
    go = asyncio.Event()

    async def work(handle):
        await go.wait()

    op = await ops.start("Listed", work, project="default")

    def status(listing):
        return [o["status"] for o in listing if o["id"] == op.id]

    assert status(await ops.list("default")) == ["Running"]
    assert status(await ops.list("default")) == ["Running"]  # read again, still running
    go.set()
    await ops.wait_local(op.id)
    assert status(await ops.list("default")) == ["Success"]  # the change is seen
    got = await ops.list(None)
    assert status(got) == ["Success"]  # from what was read before
    assert status(await ops.list("elsewhere")) == []
    got[0]["status"] = "mangled"  # a caller's copy, not the remembered record
    assert status(await ops.list(None)) == ["Success"]
    r = await aapi.get("/1.0/operations", params={"recursion": "1"})
    assert [o["status"] for o in r.json()["metadata"]["success"] if o["id"] == op.id] == \
        ["Success"]

    ops.retention = 1  # this lister's retention: the remembered record has expired
    await asyncio.sleep(1.5)
    assert status(await ops.list(None)) == []
