"""A copy interrupted by a crash (issue 10): the instance service kills itself at a named
point of ``lxc copy`` (after the volume copy, after the snapshot records, after the
driver's definition); the client's operation fails, and after the restart nothing of the
copy stays (no record, volume, snapshot volume or snapshot record) and the name is free.
Runs on the private stack of tests/test_faults.py (it kills and restarts processes).
"""

from __future__ import annotations

import pytest

from .test_faults import (  # noqa: F401  (fixtures)
    assert_clean,
    fapi,
    fstack,
    kv_records,
    restart,
    start_again,
    wait_dead,
    wait_final,
)
from .world import make_world, wait_for, wait_op

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(fstack, fapi, busybox_tarball):  # noqa: F811
    with make_world(fapi, fstack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


@pytest.mark.parametrize("point", ["copy:after_volume", "copy:after_snapshots",
                                   "copy:after_driver"])
def test_instance_service_killed_mid_copy(world, fstack, fapi, point):  # noqa: F811
    w = world
    src = w.name(f"cs{point.rsplit('_', 1)[-1][:3]}")
    w.wait(fapi.post("/1.0/instances", json={
        "name": src, "source": {"type": "image", "alias": w.image}, "profiles": [w.profile]}))
    for snap in ("s0", "s1"):
        w.wait(fapi.post(f"/1.0/instances/{src}/snapshots", json={"name": snap}))
    target = w.name(f"cc{point.rsplit('_', 1)[-1][:3]}")
    restart(fstack, "instance", fault=point)
    r = fapi.post("/1.0/instances", json={"name": target,
                                          "source": {"type": "copy", "source": src}})
    assert r.status_code == 202, r.text
    wait_dead(fstack, "instance")
    # restarted first: its start fails what the dead one left (test_faults times the
    # gateway's sweep of a dead owner's operations; here it would only add ~8 s)
    start_again(fstack, "instance")
    op = wait_final(fapi, r.json()["operation"])
    assert op["status"] == "Failure", op
    assert_clean(w)
    assert fapi.get(f"/1.0/instances/{target}").status_code == 404
    snaps_dir = fstack.dir / "storage-pools" / w.pool / "containers-snapshots" / target
    assert not snaps_dir.exists() or not any(snaps_dir.iterdir())
    assert not [s for s in kv_records(fstack, "instance_snapshots")
                if s["instance"] == target]
    # the source is whole, and the name is free again
    assert sorted(u.rsplit("/", 1)[-1] for u in fapi.get(
        f"/1.0/instances/{src}/snapshots").json()["metadata"]) == ["s0", "s1"]
    wait_op(fapi, fapi.post("/1.0/instances", json={
        "name": target, "source": {"type": "copy", "source": src}}))
    assert len(fapi.get(f"/1.0/instances/{target}/snapshots").json()["metadata"]) == 2
    for name in (target, src):
        w.remove(name)


def test_instance_service_killed_mid_move(world, fstack, fapi):  # noqa: F811
    """Killed after the volume was copied to the new pool (not yet journaled whole): the
    next start undoes the copy, the instance is whole on its old pool and starts; the move
    tried again succeeds. (tests/test_move_faults.py: every other point.)"""
    w = world
    other = f"{w.prefix}mv"
    assert fapi.post("/1.0/storage-pools", json={"name": other, "driver": "dir"}
                     ).status_code == 200
    name = w.name("mv")
    try:
        w.wait(fapi.post("/1.0/instances", json={
            "name": name, "source": {"type": "image", "alias": w.image},
            "profiles": [w.profile]}))
        w.wait(fapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "s0"}))
        restart(fstack, "instance", fault="move:after_volume")
        r = fapi.post(f"/1.0/instances/{name}", json={"migration": True, "pool": other})
        assert r.status_code == 202, r.text
        wait_dead(fstack, "instance")
        start_again(fstack, "instance")  # before: its start fails the operation at once
        assert wait_final(fapi, r.json()["operation"])["status"] == "Failure"
        leftover = fstack.dir / "storage-pools" / other / "containers" / name
        wait_for(lambda: not leftover.exists(), 30, what="the dead move's copy to go")
        assert w.get(name)["expanded_devices"]["root"]["pool"] == w.pool
        w.state(name, "start")
        w.state(name, "stop", force=True)
        w.wait(fapi.post(f"/1.0/instances/{name}", json={"migration": True, "pool": other}))
        got = w.get(name)
        assert got["expanded_devices"]["root"]["pool"] == other
        assert "moving_to" not in got
        assert not (fstack.dir / "storage-pools" / w.pool / "containers" / name).exists()
        assert [u.rsplit("/", 1)[-1] for u in fapi.get(
            f"/1.0/instances/{name}/snapshots").json()["metadata"]] == ["s0"]
        w.state(name, "start")
        assert w.live(name)["status"] == "Running"
    finally:
        w.remove(name)
        fapi.delete(f"/1.0/storage-pools/{other}")


def test_instance_service_killed_mid_publish(world, fstack, fapi):  # noqa: F811
    """Killed while packing the image: the publish fails within seconds (the image
    service watches the packer), no image is made, the next publish cleans the dead
    one's work dir and succeeds."""
    w = world
    name = w.name("pub")
    images = {i["fingerprint"] for i in fapi.get(
        "/1.0/images", params={"recursion": 1}).json()["metadata"]}
    w.wait(fapi.post("/1.0/instances", json={
        "name": name, "source": {"type": "image", "alias": w.image}, "profiles": [w.profile]}))
    try:
        restart(fstack, "instance", fault="publish:after_meta")
        r = fapi.post("/1.0/images", json={"source": {"type": "instance", "name": name}})
        assert r.status_code == 202, r.text
        wait_dead(fstack, "instance")
        op = wait_final(fapi, r.json()["operation"], timeout=30)
        assert op["status"] == "Failure" and "instance service" in op["err"], op
        start_again(fstack, "instance")
        assert {i["fingerprint"] for i in fapi.get(
            "/1.0/images", params={"recursion": 1}).json()["metadata"]} == images
        assert list((fstack.dir / "tmp").glob("publish-*"))  # what the dead one left
        fp = wait_op(fapi, fapi.post("/1.0/images", json={
            "source": {"type": "instance", "name": name}}))["metadata"]["fingerprint"]
        assert not list((fstack.dir / "tmp").glob("publish-*"))
        wait_op(fapi, fapi.delete(f"/1.0/images/{fp}"))
    finally:
        w.remove(name)
