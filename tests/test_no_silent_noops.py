"""No silent no-ops: a device change a running container cannot take is refused (400
naming the device, "stop the instance first"), never stored with exit code 0; what is
applied live is checked inside or on the host. Through the stock ``lxc`` client."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.storage.drivers import btrfs_util

from .test_lxc_client import lxc
from .world import make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


@pytest.fixture(scope="module")
def running(world):
    return world.create("run", start=True)


def _refused(stack, *args: str) -> str:
    r = lxc(stack, *args, check=False)
    assert r.returncode != 0, (args, r.stdout)
    assert "stop the instance first" in r.stderr, r.stderr
    return r.stderr


def _devices(api, name: str) -> dict:
    return api.get(f"/1.0/instances/{name}").json()["metadata"]["devices"]


def test_nic_add_to_running_container_is_applied_live(world, stack, api, running):
    """Hot-plugged (issue 15), not stored for the next start: the NIC is in the container
    at once, and goes at once (tests/test_devices_live.py has the rest)."""
    lxc(stack, "config", "device", "add", running, "eth1", "nic", f"network={world.net}",
        "name=eth1")
    mac = api.get(f"/1.0/instances/{running}").json()["metadata"]["config"][
        "volatile.eth1.hwaddr"]
    assert mac in lxc(stack, "exec", running, "--", "ip", "-o", "link", "show",
                      "eth1").stdout
    lxc(stack, "config", "device", "remove", running, "eth1")
    assert lxc(stack, "exec", running, "--", "ip", "link", "show", "eth1",
               check=False).returncode != 0


def test_nic_change_on_running_container_is_applied_live(world, stack, api, running):
    lxc(stack, "config", "device", "override", running, "eth0",
        "hwaddr=00:16:3e:aa:bb:cc")
    try:
        assert _devices(api, running)["eth0"]["hwaddr"] == "00:16:3e:aa:bb:cc"
        link = lxc(stack, "exec", running, "--", "ip", "-o", "link", "show", "eth0").stdout
        assert "00:16:3e:aa:bb:cc" in link  # re-plugged with the new MAC
    finally:
        lxc(stack, "config", "device", "remove", running, "eth0")  # the profile's again
    assert "eth0" not in _devices(api, running)


def test_unknown_device_change_on_running_vm_style_is_refused(world, stack, api, running):
    """What cannot be applied live is still refused: a gpu (this host has none)."""
    r = lxc(stack, "config", "device", "add", running, "g", "gpu", check=False)
    assert r.returncode != 0 and "gpu" in r.stderr, r.stderr
    assert "g" not in _devices(api, running)


def test_nic_limits_change_is_applied_live(world, stack, api, running):
    lxc(stack, "config", "device", "override", running, "eth0", "limits.egress=2Mbit")
    assert _devices(api, running)["eth0"]["limits.egress"] == "2Mbit"


def test_deleting_a_shaped_instance_removes_its_ifb(world, stack, api):
    """limits.egress shapes through an ifb device named after the host veth: the veth goes
    with the instance, and so must the ifb (it used to stay behind)."""
    from services.network.nic import ifb_name

    name = world.create("shaped", start=True)
    lxc(stack, "config", "device", "override", name, "eth0", "limits.egress=2Mbit")
    host = api.get(f"/1.0/instances/{name}").json()["metadata"]["config"][
        "volatile.eth0.host_name"]
    ifb = Path("/sys/class/net") / ifb_name(host)
    assert ifb.exists()
    lxc(stack, "delete", "--force", name)
    assert not ifb.exists()


def test_root_size_on_running_container_is_a_quota_at_once(world, stack, running):
    vol = Path(world.volume(running))
    lxc(stack, "config", "device", "override", running, "root", "size=256MiB")
    assert btrfs_util.referenced_limit(vol) == 256 * 2**20
    lxc(stack, "config", "device", "set", running, "root", "size=")
    assert btrfs_util.referenced_limit(vol) is None


def test_nic_added_while_stopped_appears_at_start(world, stack, api):
    name = world.create("stopped")
    lxc(stack, "config", "device", "add", name, "eth1", "nic", f"network={world.net}")
    lxc(stack, "start", name)
    nets = lxc(stack, "exec", name, "--", "ls", "/sys/class/net").stdout.split()
    assert "eth1" in nets, nets


def test_start_only_key_on_running_container_is_refused(world, stack, api, running):
    err = _refused(stack, "config", "set", running, "security.nesting", "true")
    assert "security.nesting" in err
    cfg = api.get(f"/1.0/instances/{running}").json()["metadata"]["config"]
    assert "security.nesting" not in cfg


def test_profile_nic_added_under_a_running_container_is_refused(world, stack, api, running):
    """Checked before the profile is saved: the profile stays as it was. (A bridged NIC
    is hot-plugged into the running container; a macvlan one cannot be yet.)"""
    before = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"]
    err = _refused(stack, "profile", "device", "add", world.profile, "eth9", "nic",
                   "nictype=macvlan", f"parent={world.net}")
    assert running in err
    assert api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"] == before


def test_root_size_at_create_is_the_volume_quota(world, stack, api):
    name = world.create("sized", devices={"root": {"type": "disk", "path": "/",
                                                   "pool": world.pool, "size": "300MiB"}})
    assert btrfs_util.referenced_limit(Path(world.volume(name))) == 300 * 2**20
