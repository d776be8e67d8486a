"""NICs hot-plugged into and out of a RUNNING virtual machine (real QEMU under TCG, real
libvirtd), through the stock ``lxc`` client; proxy devices refused on VMs with the reason.
One VM for the module (slow)."""

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
    try:
        yield vm_world
    finally:
        for name in list(vm_world.instances):
            vm_world.remove(name)


@pytest.fixture(scope="module")
def vm(world):
    name = create_vm(world, "nvm", config={"limits.memory": "256MiB"})
    wait_agent(world, name)
    return name


def _macs(w, name: str) -> set[str]:
    code, out, err = run(w, name, ["sh", "-c", "cat /sys/class/net/*/address"])
    assert code == 0, err
    return set(out.split())


def _xml(name: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name],
                          capture_output=True, text=True, check=True).stdout


def test_nic_hotplugged_into_a_running_vm_and_removed(world, vm, api, stack):
    lxc(stack, "config", "device", "add", vm, "eth1", "nic", f"network={world.net}")
    cfg = api.get(f"/1.0/instances/{vm}").json()["metadata"]["config"]
    mac, tap = cfg["volatile.eth1.hwaddr"], cfg["volatile.eth1.host_name"]
    assert mac in _xml(vm) and tap in _xml(vm)
    wait_for(lambda: mac in _macs(world, vm), 120, what="the guest to see the new NIC")
    lxc(stack, "config", "device", "remove", vm, "eth1")
    assert mac not in _xml(vm)
    wait_for(lambda: mac not in _macs(world, vm), 120, what="the guest to lose the NIC")
    cfg = api.get(f"/1.0/instances/{vm}").json()["metadata"]["config"]
    assert not [k for k in cfg if k.startswith("volatile.eth1.")]


def test_proxy_and_unix_devices_on_a_running_vm_are_refused(world, vm, api, stack):
    before = api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"]
    r = lxc(stack, "config", "device", "add", vm, "p", "proxy",
            "listen=tcp:127.0.0.1:18080", "connect=tcp:127.0.0.1:80", check=False)
    assert r.returncode != 0 and "virtual machine" in r.stderr, r.stderr
    r = lxc(stack, "config", "device", "add", vm, "z", "unix-char", "path=/dev/z",
            "major=1", "minor=5", check=False)
    assert r.returncode != 0 and "stop the instance first" in r.stderr, r.stderr
    assert api.get(f"/1.0/instances/{vm}").json()["metadata"]["devices"] == before
