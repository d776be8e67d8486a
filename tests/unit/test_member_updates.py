"""Pure logic of changing a clustered pool or network: which keys in which scope
(LXD's rule: member keys only with --target, the others only without), what a member's
entry keeps, and DHCP slices cut again from a new subnet."""

from __future__ import annotations

import pytest

from services.network import network_members as nm
from services.storage import pool_members as pm
from shared.errors import BadRequest, NotFound


def pool() -> dict:
    return {"name": "p", "driver": "btrfs", "status": "Created",
            "config": {"size": "1GiB"},
            "members": {"n1": {"status": "Created", "config": {"source": "/d/n1.img"}},
                        "n2": {"status": "Created", "config": {
                            "source": "/d/n2.img", "size": "2GiB",
                            "btrfs.mount_options": "user_subvol_rm_allowed"}}}}


def test_pool_cluster_wide_change_refuses_member_keys() -> None:
    with pytest.raises(BadRequest, match="cluster member specific"):
        pm.update_keys(pool(), {"size": "3GiB"}, True, None)
    with pytest.raises(BadRequest, match="Invalid btrfs pool config key"):
        pm.update_keys(pool(), {"lvm.vg_name": "x"}, True, None)


def test_pool_put_keeps_member_keys_it_leaves_out() -> None:
    current, wanted = pm.update_keys(pool(), {"btrfs.mount_options": "compress=zstd"},
                                     False, None)
    assert current == {"size": "1GiB"}
    assert wanted == {"size": "1GiB", "btrfs.mount_options": "compress=zstd"}


def test_pool_target_change_only_member_keys_of_a_known_member() -> None:
    current, wanted = pm.update_keys(pool(), {"size": "3GiB"}, True, "n2")
    assert current["source"] == "/d/n2.img" and wanted["size"] == "3GiB"
    with pytest.raises(BadRequest, match="member-specific"):
        pm.update_keys(pool(), {"btrfs.mount_options": "ssd"}, True, "n2")
    with pytest.raises(NotFound):
        pm.update_keys(pool(), {"size": "3GiB"}, True, "n9")


def test_pool_entry_holds_member_keys_only() -> None:
    made = {"source": "/d/n1.img", "size": "1GiB", "btrfs.mount_options": "x"}
    assert pm.own_keys({"size": "1GiB"}, made) == {"source": "/d/n1.img"}
    cleaned = pm.with_own_keys_only(pool())
    assert cleaned["n2"]["config"] == {"source": "/d/n2.img", "size": "2GiB"}
    assert cleaned["n2"]["status"] == "Created"


def network() -> dict:
    return {"name": "n", "type": "bridge", "status": "Created",
            "config": {"ipv4.address": "10.1.2.1/24"},
            "members": {m: {"status": "Created", "slice": i,
                            "config": nm.dhcp_slice({"ipv4.address": "10.1.2.1/24"}, i, 8)}
                        for i, m in enumerate(("n1", "n2"))}}


def test_network_scopes() -> None:
    with pytest.raises(BadRequest, match="cluster member specific"):
        nm.update_keys(network(), {"bridge.external_interfaces": "eth1"}, True, None)
    with pytest.raises(BadRequest, match="member-specific"):
        nm.update_keys(network(), {"dns.domain": "x"}, True, "n1")
    # a PUT with --target that leaves the member's slice out keeps it
    current, wanted = nm.update_keys(network(), {"ipv4.address": "10.1.2.1/24",
                                                 "bridge.external_interfaces": "eth1"},
                                     False, "n2")
    assert wanted["ipv4.dhcp.ranges"] == current["ipv4.dhcp.ranges"]


def test_network_new_subnet_cuts_the_slices_again() -> None:
    entries = nm.new_entries(network(), {"ipv4.address": "10.9.9.1/24"})
    assert entries["n1"]["config"]["ipv4.dhcp.ranges"].startswith("10.9.9.")
    assert entries["n2"]["slice"] == 1
    assert entries["n1"]["config"] != entries["n2"]["config"]
    kept = nm.new_entries(network(), {"ipv4.address": "10.1.2.1/24", "dns.domain": "x"})
    assert kept["n2"]["config"] == network()["members"]["n2"]["config"]
