"""Disk devices of a virtual machine (real QEMU under TCG, real libvirtd): a block custom
volume and a host file hot-plugged into the RUNNING guest as virtio-blk disks and
unplugged again, a directory refused with the reason. One VM for the module (slow)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .stack import wait_for
from .test_vms import create_vm, libvirtd, run, vm_image, wait_agent  # noqa: F401
from .test_vms import world as vm_world  # noqa: F401
from .world import lxc

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(vm_world):  # noqa: F811
    vm_world.custom = []
    try:
        yield vm_world
    finally:
        for name in list(vm_world.instances):
            vm_world.remove(name)
        for vol in vm_world.custom:
            lxc(vm_world.stack, "storage", "volume", "delete", vm_world.pool, vol,
                check=False)


@pytest.fixture(scope="module")
def vm(world):
    name = create_vm(world, "dvm", config={"limits.memory": "256MiB"})
    wait_agent(world, name)
    return name


def _blocks(w, name: str) -> dict[str, str]:
    """The guest's virtio disks: {serial: size in sectors}."""
    code, out, err = run(w, name, ["sh", "-c",
                                   "for d in /sys/block/vd*; do echo $(cat $d/serial "
                                   "2>/dev/null) $(cat $d/size); done"])
    assert code == 0, err
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def _xml(w, name: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name],
                          capture_output=True, text=True, check=True).stdout


def test_block_volume_hotplugged_into_running_vm_and_removed(world, vm, api, stack):
    vol = f"{world.prefix}vb"
    world.custom.append(vol)
    lxc(stack, "storage", "volume", "create", world.pool, vol, "--type=block", "size=8MiB")
    lxc(stack, "storage", "volume", "attach", world.pool, vol, vm)
    wait_for(lambda: _blocks(world, vm).get(vol[:20]) == str(8 * 2**20 // 512), 120,
             what="the guest to see the hot-plugged disk")
    lxc(stack, "config", "device", "remove", vm, vol)
    wait_for(lambda: vol[:20] not in _blocks(world, vm), 120,
             what="the guest to lose the unplugged disk")
    assert "ua-disk-" not in _xml(world, vm)


def test_host_file_disk_readonly_at_next_start(world, vm, stack, tmp_path):
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * 4 * 2**20)
    lxc(stack, "config", "device", "add", vm, "raw", "disk", f"source={img}",
        "readonly=true")
    try:
        wait_for(lambda: "raw" in _blocks(world, vm), 120, what="the hot-plugged file")
        code, out, _ = run(world, vm, ["cat", "/sys/block/vdb/ro"])
        assert out.strip() == "1" or "<readonly/>" in _xml(world, vm)
    finally:
        lxc(stack, "config", "device", "remove", vm, "raw")


def test_limits_live_and_disk_kept_across_restart(world, vm, stack, tmp_path):
    img = tmp_path / "lim.raw"
    img.write_bytes(b"\0" * 2 * 2**20)
    lxc(stack, "config", "device", "add", vm, "lim", "disk", f"source={img}",
        "limits.read=1MB")
    try:
        wait_for(lambda: "lim" in _blocks(world, vm), 120, what="the hot-plugged file")
        assert "<read_bytes_sec>1000000</read_bytes_sec>" in _xml(world, vm)
        lxc(stack, "config", "device", "set", vm, "lim", "limits.read=2MB")
        assert "<read_bytes_sec>2000000</read_bytes_sec>" in _xml(world, vm)
        lxc(stack, "restart", vm, "--force")
        wait_agent(world, vm)
        assert "lim" in _blocks(world, vm)  # in the domain from its start on
        assert "<read_bytes_sec>2000000</read_bytes_sec>" in _xml(world, vm)
    finally:
        lxc(stack, "config", "device", "remove", vm, "lim")


def test_failed_hotplug_into_vm_leaves_it_as_it_was(world, vm, api, stack, tmp_path):
    """The second disk cannot be opened by QEMU (the VM's own root disk, locked by it):
    the first one, already attached, is unplugged again; the record is unchanged."""
    good = tmp_path / "good.raw"
    good.write_bytes(b"\0" * 2**20)
    locked = next((stack.dir / "storage-pools" / world.pool).glob(f"*/{vm}/root.qcow2"))
    before = api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"]
    r = api.patch(f"/1.0/instances/{vm}", json={"devices": {
        "a1": {"type": "disk", "source": str(good)},
        "z9": {"type": "disk", "source": str(locked)}}})
    if r.status_code == 202:
        op = world.wait(r, ok=False)
        assert op["status"] == "Failure" and "'z9'" in op["err"], op
    else:
        assert r.status_code == 400 and "Failed to attach disk 'z9'" in r.text, r.text
    assert api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"] == before
    wait_for(lambda: "a1" not in _blocks(world, vm), 120, what="the guest to lose a1")
    assert "ua-disk-" not in _xml(world, vm)


def test_paused_vm_takes_a_disk_but_cannot_release_one(world, vm, api, stack, tmp_path):
    img = tmp_path / "p.raw"
    img.write_bytes(b"\0" * 2**20)
    lxc(stack, "pause", vm)
    try:
        lxc(stack, "config", "device", "add", vm, "pz", "disk", f"source={img}")
        r = lxc(stack, "config", "device", "remove", vm, "pz", check=False)
        assert r.returncode != 0 and "resume it first" in r.stderr, r
        assert "pz" in api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"]
    finally:
        lxc(stack, "start", vm)  # resume
    wait_for(lambda: "pz" in _blocks(world, vm), 120, what="the disk added while paused")
    lxc(stack, "config", "device", "remove", vm, "pz")
    wait_for(lambda: "pz" not in _blocks(world, vm), 120, what="the guest to release pz")


def test_directory_on_vm_refused_with_the_reason(world, vm, api, stack, tmp_path):
    r = lxc(stack, "config", "device", "add", vm, "dir", "disk", f"source={tmp_path}",
            "path=/mnt/d", check=False)
    assert r.returncode != 0 and "directory disks on virtual machines" in r.stderr, r
    assert "dir" not in api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"]
