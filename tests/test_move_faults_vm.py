"""``lxc move vm --storage p2`` of a virtual machine interrupted by a crash (issue 10): as
tests/test_move_faults.py for containers, with libvirt's domain as the driver's
definition: after the instance service's restart the move is undone or finished, the
domain and its directory exist once, the qcow2 volume and its snapshot are on one pool,
and the VM boots from where the record says.
Runs on the private stack of tests/test_faults.py (it kills and restarts processes).
"""

from __future__ import annotations

import os
import subprocess
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
from .test_vms import REPO, create_vm, upload_split, vm_image, wait_agent  # noqa: F401
from .world import make_world, wait_for, wait_op

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def flibvirtd(fstack, fapi):  # noqa: F811
    env = {**os.environ, "CORRAL_DIR": str(fstack.dir), "CORRAL_APT_UPDATED": "1"}
    subprocess.run([str(REPO / "deploy/libvirt.sh"), "up"], env=env, check=True,
                   capture_output=True)
    try:
        wait_for(lambda: "qemu" in fapi.get("/1.0").json()["metadata"]["environment"]
                 ["driver"], 30, what="GET /1.0 to list the qemu driver")
        yield
    finally:  # only the daemons this `up` started
        subprocess.run([str(REPO / "deploy/libvirt.sh"), "down"], env=env, check=False,
                       capture_output=True)


@pytest.fixture(scope="module")
def world(fstack, fapi, busybox_tarball, flibvirtd, vm_image):  # noqa: F811
    with make_world(fapi, fstack, busybox_tarball, network=True, pool_driver="btrfs",
                    pool_config={"size": "1GiB"}) as w:
        fp = upload_split(fapi, *vm_image)
        w.vm_alias = f"{w.prefix}-vm"
        w.other = f"{w.prefix}q"
        assert fapi.post("/1.0/storage-pools", json={"name": w.other, "driver": "dir"}
                         ).status_code == 200
        try:
            assert fapi.post("/1.0/images/aliases", json={
                "name": w.vm_alias, "target": fp}).status_code in (200, 201)
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            fapi.delete(f"/1.0/images/aliases/{w.vm_alias}")
            r = fapi.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(fapi, r, ok=False)
            fapi.delete(f"/1.0/storage-pools/{w.other}")


def domains() -> set[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("point,boot", [("move:after_volume", False),
                                        ("move:after_purge", True),
                                        ("move:after_records", False)])
def test_instance_service_killed_mid_vm_move(world, fstack, fapi, point, boot):  # noqa: F811
    w = world
    name = create_vm(w, "v" + point.split(":")[1].replace("_", "")[:6], start=False,
                     config={"limits.memory": "256MiB"})
    w.wait(fapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "s0"}))
    restart(fstack, "instance", fault=point)
    r = fapi.post(f"/1.0/instances/{name}", json={"migration": True, "pool": w.other})
    assert r.status_code == 202, r.text
    wait_dead(fstack, "instance")
    # restarted first: its start fails what the dead one left (test_faults times the
    # gateway's sweep of a dead owner's operations; here it would only add ~8 s)
    start_again(fstack, "instance")
    assert wait_final(fapi, r.json()["operation"])["status"] == "Failure"

    finished = point != "move:after_volume"
    pool, left = (w.other, w.pool) if finished else (w.pool, w.other)
    deadline = time.monotonic() + 60
    while True:
        recs = [x for x in kv_records(fstack, "instances") if x["name"] == name]
        if recs and not (recs[0].get("moving_to") or recs[0].get("moving_from")):
            break
        assert time.monotonic() < deadline, f"move journal still there: {recs}"
        time.sleep(0.5)
    assert w.get(name)["expanded_devices"]["root"]["pool"] == pool
    assert name in domains()
    assert (fstack.dir / "virtual-machines" / name).is_dir()
    pools = fstack.dir / "storage-pools"
    assert (pools / pool / "virtual-machines" / name).is_dir()
    assert (pools / pool / "virtual-machines-snapshots" / name / "s0").is_dir()
    assert not (pools / left / "virtual-machines" / name).exists()
    assert not (pools / left / "virtual-machines-snapshots" / name).exists()
    vols = {(v["pool"], v["name"]) for v in kv_records(fstack, "storage_volumes")
            if v.get("kind") == "virtual-machine" and v["name"] == name}
    assert vols == {(pool, name)}, vols
    snaps = [(s["name"], s.get("pool")) for s in kv_records(fstack, "instance_snapshots")
             if s["instance"] == name]
    assert snaps == [("s0", pool)], snaps
    assert w.live(name)["status"] == "Stopped"
    if boot:  # the domain's disk is the moved volume: the guest boots from it
        w.state(name, "start")
        wait_agent(w, name)
        w.state(name, "stop", force=True)
    w.remove(name)
    assert name not in domains()
    assert not (pools / pool / "virtual-machines" / name).exists()
