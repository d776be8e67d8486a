"""Lists ordered by ``created_at`` sort by the time, not by its spelling.

Records carry LXD's timestamps in more than one spelling: one made here has nanoseconds
(``...:24.645509000Z``), one from an LXD backup, a migration or an older record may have
whole seconds (``...:24Z``) or an offset (``...:26+02:00``); as strings ``"24."`` sorts
before ``"24Z"``, so a list sorted as strings put the later one first. Instance snapshots
had this bug (commit "Instance snapshots sort by their time"); here the same for custom
volume snapshots, custom volume backups and instance backups.

The records are made through the API, then their times are written in other spellings
straight into the KV bucket (as a record of an older version or an import would have
them), and the owning service is restarted so it reads them (its cache is loaded at
start). Then the stock ``lxc`` and the REST API list them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from shared import codec
from shared.state import key

from .stack import wait_for
from .world import lxc, make_world, wait_op

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("lxc") is None, reason="needs the stock lxc client"),
]

# (earlier, later) by time; as strings the second sorts first
SPELLINGS = [("2026-11-30T07:27:24Z", "2026-11-30T07:27:24.645509000Z"),
             ("2026-11-30T07:27:26+02:00", "2026-11-30T06:27:25.5Z")]


async def rewrite(bus: Any, bucket: str, k: str, change: Callable[[dict], None]) -> None:
    kv = await bus.js.key_value(bucket)
    entry = await kv.get(k)
    rec = codec.decode(entry.value)
    change(rec)
    await kv.put(k, codec.encode(rec))


def restart(stack: Any, api: Any, service: str, probe: str) -> None:
    stack.stop(service)
    stack.start(service)
    wait_for(lambda: api.get(probe).status_code == 200, 60,
             what=f"the {service} service to answer again")


@pytest.mark.parametrize("spelling", SPELLINGS, ids=["whole-seconds", "offset"])
async def test_custom_volume_snapshots_and_backups(stack, api, bus, uid, spelling):
    early, late = spelling
    pool, vol = f"{uid}p", f"{uid}v"
    base = f"/1.0/storage-pools/{pool}/volumes/custom"
    assert api.post("/1.0/storage-pools", json={"name": pool, "driver": "dir"}
                    ).status_code == 200
    try:
        assert api.post(base, json={"name": vol}).status_code == 200
        for s in ("s1", "s2"):
            lxc(stack, "storage", "volume", "snapshot", pool, vol, s)
        for b in ("b1", "b2"):
            wait_op(api, api.post(f"{base}/{vol}/backups", json={
                "name": b, "compression_algorithm": "none"}))

        def spell(rec: dict) -> None:
            rec["snapshots"]["s1"]["created_at"] = early
            rec["snapshots"]["s2"]["created_at"] = late
            rec["backups"]["b1"]["created_at"] = early
            rec["backups"]["b2"]["created_at"] = late

        await rewrite(bus, "storage_volumes", key(pool, "custom", "default", vol), spell)
        restart(stack, api, "storage", f"/1.0/storage-pools/{pool}")

        snaps = api.get(f"{base}/{vol}/snapshots", params={"recursion": 1}).json()
        assert [s["name"] for s in snaps["metadata"]] == ["s1", "s2"], snaps
        listed = api.get(base, params={"recursion": 1}).json()["metadata"]
        assert [v["name"] for v in listed] == [vol, f"{vol}/s1", f"{vol}/s2"], listed
        backups = api.get(f"{base}/{vol}/backups", params={"recursion": 1}).json()
        assert [b["name"] for b in backups["metadata"]] == ["b1", "b2"], backups
    finally:
        api.delete(f"{base}/{vol}")
        api.delete(f"/1.0/storage-pools/{pool}")


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


@pytest.mark.parametrize("spelling", SPELLINGS, ids=["whole-seconds", "offset"])
async def test_instance_backups(world, stack, api, bus, spelling):
    early, late = spelling
    name = world.create(f"b{SPELLINGS.index(spelling)}")
    for b in ("b1", "b2"):
        world.wait(api.post(f"/1.0/instances/{name}/backups", json={
            "name": b, "compression_algorithm": "none"}))
    for b, when in (("b1", early), ("b2", late)):
        await rewrite(bus, "backups", key("default", name, b),
                      lambda rec, when=when: rec.update(created_at=when))
    restart(stack, api, "instance", f"/1.0/instances/{name}")

    got = api.get(f"/1.0/instances/{name}/backups", params={"recursion": 1}).json()
    assert [b["name"] for b in got["metadata"]] == ["b1", "b2"], got
    urls = api.get(f"/1.0/instances/{name}/backups").json()["metadata"]
    assert urls == [f"/1.0/instances/{name}/backups/b1", f"/1.0/instances/{name}/backups/b2"]
    info = lxc(stack, "info", name).stdout
    assert info.index("b1") < info.index("b2"), info
