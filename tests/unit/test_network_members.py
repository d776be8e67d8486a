"""Pure logic of networks per cluster member: DHCP slices and a member's view."""

from __future__ import annotations

import ipaddress

import pytest

from services.network import network_members as nm
from shared.errors import BadRequest, NotFound


def test_slices_cover_the_default_range_without_overlap() -> None:
    cfg = {"ipv4.address": "10.1.2.1/24"}
    parts = [nm.dhcp_slice(cfg, i, 3)["ipv4.dhcp.ranges"] for i in range(3)]
    bounds = [tuple(int(ipaddress.IPv4Address(a)) for a in p.split("-")) for p in parts]
    assert bounds[0][0] == int(ipaddress.IPv4Address("10.1.2.2"))
    assert bounds[-1][1] == int(ipaddress.IPv4Address("10.1.2.254"))
    for (_, hi), (lo, _) in zip(bounds, bounds[1:], strict=False):
        assert lo == hi + 1


@pytest.mark.parametrize("cfg,count", [
    ({"ipv4.address": "10.1.2.1/24", "ipv4.dhcp.ranges": "10.1.2.10-10.1.2.20"}, 3),
    ({"ipv4.address": "none"}, 3),
    ({"ipv4.address": "10.1.2.1/24"}, 1),
])
def test_no_slice_when_the_user_set_a_range_or_nothing_to_cut(cfg, count) -> None:
    assert nm.dhcp_slice(cfg, 0, count) == {}


def test_member_view_and_keys() -> None:
    rec = {"name": "n", "config": {"ipv4.address": "10.1.2.1/24"},
           "members": {"node2": {"status": "Created",
                                 "config": {"ipv4.dhcp.ranges": "10.1.2.86-10.1.2.169"}}}}
    mine = nm.local_view(rec, "node2")
    assert mine["status"] == "Created" and mine["config"]["ipv4.dhcp.ranges"].startswith("10.")
    assert nm.local_view(rec, "node3")["status"] == "Pending"
    assert nm.public_fields(rec, None) == {"locations": ["node2"]}
    with pytest.raises(NotFound):
        nm.public_fields(rec, "node9")
    with pytest.raises(BadRequest):
        nm.member_entry({"ipv4.address": "10.0.0.1/24"})
    with pytest.raises(BadRequest):
        nm.check_global({"bridge.external_interfaces": "eth1"})
