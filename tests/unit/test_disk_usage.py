"""Pure parts of root disk usage: the qgroup output parser, and where usage lands in state."""

from __future__ import annotations

from services.instance.disk_usage import merge, root_name
from services.storage.drivers.btrfs_util import parse_qgroup_show

# btrfs-progs 6.2 (Debian 12) and an older layout (lowercase header, four columns).
NEW = """Qgroupid    Referenced    Exclusive   Max exclusive   Path
--------    ----------    ---------   -------------   ----
0/258         16384000       5259264            none   containers/c1
"""
OLD = """qgroupid         rfer         excl     max_excl
--------         ----         ----     --------
0/257        123456789      4096000         none
"""


def test_parse_reads_the_exclusive_column_of_the_first_row():
    assert parse_qgroup_show(NEW) == ("0/258", 5259264)
    assert parse_qgroup_show(OLD) == ("0/257", 4096000)


def test_parse_without_a_data_row_is_none():
    assert parse_qgroup_show("") is None
    assert parse_qgroup_show("qgroupid rfer excl max_excl\n-------- ----\n") is None
    assert parse_qgroup_show("0/5 none none none\n") is None


def _rec(name: str, root: str = "root") -> dict:
    return {"name": name, "project": "default", "pool": "p",
            "expanded_devices": {root: {"type": "disk", "path": "/", "pool": "p"},
                                 "eth0": {"type": "nic", "network": "n"}}}


def test_usage_goes_under_the_root_device_name():
    states = {"a": {"disk": {}}, "b": {"disk": {}}, "c": None}
    merge(states, [_rec("a"), _rec("b", root="rootfs"), _rec("c")], [5 << 20, 7, 1])
    assert states["a"]["disk"] == {"root": {"usage": 5 << 20}}
    assert states["b"]["disk"] == {"rootfs": {"usage": 7}}
    assert states["c"] is None  # no state (not on this host): nothing invented


def test_unknown_usage_leaves_no_key():
    """A dir pool cannot tell (LXD 5.0 without project quotas): no ``usage`` key at all,
    so ``lxc list -c D`` shows it blank rather than a false 0."""
    states = {"a": {"disk": {}}}
    merge(states, [_rec("a")], [None])
    assert states["a"]["disk"] == {}
    assert root_name({"expanded_devices": {}}) is None
