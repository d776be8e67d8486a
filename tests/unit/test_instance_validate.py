"""Instance input checks and profile expansion: pure rules, answered before any work."""

from __future__ import annotations

import pytest

from services.instance import records, validate
from shared.errors import BadRequest


def test_config_keys_and_values() -> None:
    ok = {"limits.memory": "64MiB", "security.privileged": "true", "user.x": "1",
          "environment.FOO": "bar", "boot.autostart.delay": "5"}
    assert validate.check_config(ok) == ok
    assert validate.check_config(None) == {}
    for bad in ({"bogus.key": "1"}, {"limits.memory": "lots"}, {"security.nesting": "maybe"},
                {"boot.autostart.delay": "soon"}, "not a map"):
        with pytest.raises(BadRequest):
            validate.check_config(bad)


def test_devices() -> None:
    root = {"type": "disk", "path": "/", "pool": "p"}
    assert validate.check_devices({"root": root})["root"] == root
    for bad in ({"x": {"type": "usb"}}, {"x": {"type": "disk", "path": "/data"}},
                {"x": {"type": "nic"}}, {"x": {"path": "/"}}):
        with pytest.raises(BadRequest):
            validate.check_devices(bad)


def test_root_device() -> None:
    assert validate.root_device({"r": {"type": "disk", "path": "/", "pool": "p"},
                                 "n": {"type": "nic", "network": "br"}})[0] == "r"
    with pytest.raises(BadRequest, match="No root device"):
        validate.root_device({})
    with pytest.raises(BadRequest, match="More than one"):
        validate.root_device({a: {"type": "disk", "path": "/", "pool": "p"} for a in "ab"})
    with pytest.raises(BadRequest, match="pool"):
        validate.root_device({"r": {"type": "disk", "path": "/"}})


def test_profiles_and_flags() -> None:
    assert validate.check_profiles(None) == ["default"]
    assert validate.check_profiles([]) == []
    for bad in ("default", [1], ["a", "a"]):
        with pytest.raises(BadRequest):
            validate.check_profiles(bad)
    assert validate.check_bool("ephemeral", None) is False
    with pytest.raises(BadRequest):
        validate.check_bool("ephemeral", "yes")


def test_profile_expansion_order_and_whole_devices() -> None:
    """Profiles in order, then the instance's own; a device replaces a same-named one whole."""
    p1 = {"config": {"limits.cpu": "1", "user.a": "p1"},
          "devices": {"eth0": {"type": "nic", "network": "br0", "mtu": "1400"},
                      "root": {"type": "disk", "path": "/", "pool": "p1"}}}
    p2 = {"config": {"user.a": "p2"}, "devices": {"root": {"type": "disk", "path": "/",
                                                            "pool": "p2"}}}
    cfg, devs = records.expand([p1, p2], {"limits.cpu": "2"},
                               {"eth0": {"type": "nic", "network": "br1"}})
    assert cfg == {"limits.cpu": "2", "user.a": "p2"}
    assert devs["root"]["pool"] == "p2"
    assert devs["eth0"] == {"type": "nic", "network": "br1"}  # no mtu left over from p1
    p1["devices"]["root"]["pool"] = "changed"
    assert devs["root"]["pool"] == "p2"  # copies, not shared with the profile


def test_nic_order_is_sorted_device_names() -> None:
    devs = {"eth1": {"type": "nic"}, "root": {"type": "disk"}, "eth0": {"type": "nic"}}
    assert records.nic_names(devs) == ["eth0", "eth1"]
