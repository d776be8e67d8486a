"""``lxc move c1 --storage p2`` interrupted by a crash (issue 10): the instance service
kills itself at each named point of the move; after its restart the move is undone (the
copy was not journaled whole) or finished (it was), and every source agrees: the API,
the LXC definition, the record (no journal left), the volume on one pool only, the
snapshots (records and volumes) beside it. An instance the move stopped runs again.
Runs on the private stack of tests/test_faults.py (it kills and restarts processes).
"""

from __future__ import annotations

import time

import pytest

from .test_faults import (  # noqa: F401  (fixtures)
    fapi,
    fstack,
    kv_records,
    restart,
    start_again,
    wait_dead,
    wait_final,
)
from .world import make_world

pytestmark = pytest.mark.root

# (fault point, renamed, running): where the move dies, and whether it is finished after
CASES = [
    ("move:after_volume", False, False),
    ("move:after_volume", True, True),
    ("move:after_purge", False, True),
    ("move:after_purge", True, False),
    ("move:before_record", False, False),
    ("move:before_record", True, False),
    ("move:after_records", False, False),
    ("move:after_records", True, False),
]


@pytest.fixture(scope="module")
def world(fstack, fapi, busybox_tarball):  # noqa: F811
    with make_world(fapi, fstack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        other = f"{w.prefix}p2"
        assert fapi.post("/1.0/storage-pools", json={"name": other, "driver": "dir"}
                         ).status_code == 200
        w.other = other  # type: ignore[attr-defined]
        try:
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            fapi.delete(f"/1.0/storage-pools/{other}")


def _settled(stack, names: set[str]) -> list[dict]:
    """The instance records of ``names`` once no move journal is left in them."""
    deadline = time.monotonic() + 60
    while True:
        recs = [r for r in kv_records(stack, "instances") if r["name"] in names]
        if not any(r.get("moving_to") or r.get("moving_from") for r in recs):
            return recs
        assert time.monotonic() < deadline, f"move journal still there: {recs}"
        time.sleep(0.5)


@pytest.mark.parametrize("point,renamed,running", CASES)
def test_instance_service_killed_mid_move(world, fstack, fapi,  # noqa: F811
                                          point, renamed, running):
    w = world
    tag = point.split(":")[1].replace("_", "")[:6] + ("r" if renamed else "") + \
        ("u" if running else "")
    name = w.name(f"m{tag}")
    new = w.name(f"n{tag}") if renamed else name
    w.wait(fapi.post("/1.0/instances", json={
        "name": name, "source": {"type": "image", "alias": w.image},
        "profiles": [w.profile]}))
    w.wait(fapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "s0"}))
    if running:
        w.state(name, "start")
    restart(fstack, "instance", fault=point)
    r = fapi.post(f"/1.0/instances/{name}", json={
        "migration": True, "pool": w.other, **({"name": new} if renamed else {})})
    assert r.status_code == 202, r.text
    wait_dead(fstack, "instance")
    # restarted first: its start fails what the dead one left (test_faults times the
    # gateway's sweep of a dead owner's operations; here it would only add ~8 s)
    start_again(fstack, "instance")
    assert wait_final(fapi, r.json()["operation"])["status"] == "Failure"

    finished = point != "move:after_volume"  # after it, the copy was journaled whole
    final, gone = (new, name) if finished else (name, new)
    pool, left = (w.other, w.pool) if finished else (w.pool, w.other)
    recs = _settled(fstack, {name, new})
    assert [r["name"] for r in recs] == [final], recs
    listed = {o["name"] for o in fapi.get("/1.0/instances", params={"recursion": 1}
                                          ).json()["metadata"]}
    assert final in listed and (gone == final or gone not in listed)
    got = w.get(final)
    assert got["expanded_devices"]["root"]["pool"] == pool
    pools = fstack.dir / "storage-pools"
    assert (fstack.dir / "lxc" / final / "config").is_file()
    if gone != final:
        assert not (fstack.dir / "lxc" / gone).exists()
    assert (pools / pool / "containers" / final).is_dir()
    assert (pools / pool / "containers-snapshots" / final / "s0").is_dir()
    for n in {name, new}:
        assert not (pools / left / "containers" / n).exists(), f"{n} left on {left}"
        assert not (pools / left / "containers-snapshots" / n / "s0").exists()
    vols = {(v["pool"], v["name"]) for v in kv_records(fstack, "storage_volumes")
            if v.get("kind") == "container" and v["name"] in {name, new}}
    assert vols == {(pool, final)}, vols
    snaps = [s for s in kv_records(fstack, "instance_snapshots")
             if s["instance"] in {name, new}]
    assert [(s["instance"], s["name"], s.get("pool")) for s in snaps] == \
        [(final, "s0", pool)], snaps
    assert [u.rsplit("/", 1)[-1] for u in fapi.get(
        f"/1.0/instances/{final}/snapshots").json()["metadata"]] == ["s0"]
    # as it was before the move: running again if it ran (the move stopped it)
    deadline = time.monotonic() + 60
    while running and w.live(final)["status"] != "Running":
        assert time.monotonic() < deadline, w.live(final)
        time.sleep(0.5)
    if not running:
        assert w.live(final)["status"] == "Stopped"
        w.state(final, "start")
    w.state(final, "stop", force=True)
    # the snapshot restores on its pool, and the instance goes cleanly
    w.wait(fapi.put(f"/1.0/instances/{final}", json={"restore": "s0"}))
    w.remove(final)
    assert not (pools / pool / "containers" / final).exists()
