"""The decision which device changes a running instance can take (pure logic)."""

from __future__ import annotations

import pytest

from services.instance.live_changes import check, root_size_change
from shared.errors import BadRequest

ROOT = {"type": "disk", "path": "/", "pool": "p"}
NIC = {"type": "nic", "network": "n1"}
BASE = {"root": ROOT, "eth0": NIC}


def _refused(status: str, new: dict, kind: str = "container") -> str:
    with pytest.raises(BadRequest) as exc:
        check(kind, status, BASE, new)
    return exc.value.message


@pytest.mark.parametrize("status", ["Running", "Frozen"])
@pytest.mark.parametrize("kind", ["container", "virtual-machine"])
def test_nic_add_remove_change_pass_to_hotplug_while_running(status, kind):
    for new in ({**BASE, "eth1": NIC}, {"root": ROOT}, {**BASE, "eth0": {"type": "none"}},
                {**BASE, "eth0": {**NIC, "hwaddr": "00:16:3e:00:00:01"}}):
        check(kind, status, BASE, new)  # hotplug.apply plugs, unplugs or re-plugs
    # Extra disks are hot-plugged (disks.hotplug), not refused here.
    check(kind, status, BASE, {**BASE, "data": {"type": "disk", "source": "/x",
                                                "path": "/mnt"}})


def test_macvlan_nic_not_hotplugged_yet():
    mac = {"type": "nic", "nictype": "macvlan", "parent": "eth0"}
    assert "stop the instance first" in _refused("Running", {**BASE, "m": mac})
    check("container", "Stopped", BASE, {**BASE, "m": mac})


@pytest.mark.parametrize("dev", [
    {"type": "proxy", "listen": "tcp:127.0.0.1:1", "connect": "tcp:127.0.0.1:2"},
    {"type": "unix-char", "path": "/dev/z", "major": "1", "minor": "5"}])
def test_proxy_and_unix_live_on_containers_refused_on_running_vms(dev):
    check("container", "Running", BASE, {**BASE, "x": dev})
    msg = _refused("Running", {**BASE, "x": dev}, "virtual-machine")
    assert "'x'" in msg and "stop the instance first" in msg
    check("virtual-machine", "Stopped", BASE, {**BASE, "x": dev})


def test_nic_limits_and_container_root_size_are_live():
    check("container", "Running", BASE, {**BASE, "eth0": {**NIC, "limits.egress": "1Mbit"}})
    new = {**BASE, "root": {**ROOT, "size": "1GiB"}}
    check("container", "Running", BASE, new)
    assert root_size_change(BASE, new) == "1GiB"
    assert root_size_change(new, BASE) == ""  # unset: the limit goes
    assert root_size_change(BASE, dict(BASE)) is None


def test_vm_root_size_refused_while_running_not_when_stopped():
    new = {**BASE, "root": {**ROOT, "size": "1GiB"}}
    assert "stop the instance first" in _refused("Running", new, "virtual-machine")
    check("virtual-machine", "Stopped", BASE, new)


def test_stopped_instance_takes_any_device_change():
    check("container", "Stopped", BASE, {"root": ROOT, "eth1": NIC})


def test_root_pool_never_changes():
    assert "pool" in _refused("Stopped", {**BASE, "root": {**ROOT, "pool": "q"}})


def test_root_device_renamed_with_same_content_is_no_change():
    check("container", "Running", BASE, {"rootfs": ROOT, "eth0": NIC})


def test_start_only_container_keys_refused_while_running():
    from services.instance.live_changes import check_config

    with pytest.raises(BadRequest) as exc:
        check_config("container", "Running", {}, {"raw.lxc": "lxc.environment = A=1"})
    assert "raw.lxc" in exc.value.message and "stop the instance first" in exc.value.message
    with pytest.raises(BadRequest):
        check_config("container", "Frozen", {"security.nesting": "true"}, {})
    check_config("container", "Stopped", {}, {"raw.lxc": "x"})
    check_config("container", "Running", {"raw.lxc": "x"}, {"raw.lxc": "x", "user.a": "1"})
