"""Unit tests of a bridge network's pure parts: the key table, defaults, the ULA choice,
dnsmasq's command line, the nft ruleset text, lease parsing, the forwarding sysctls."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from services.network.drivers import bridge_config as bc
from services.network.drivers import bridge_keys, dnsmasq, nft, sysctl
from services.network.subnet import pick_free_ula_subnet
from shared.errors import BadRequest, Conflict

# LXD 5.0's bridge keys (driver_bridge.go Validate, stable-5.0), NAME parts as "x".
LXD_50_KEYS = """
bgp.ipv4.nexthop bgp.ipv6.nexthop bgp.peers.x.address bgp.peers.x.asn bgp.peers.x.password
bgp.peers.x.holdtime bridge.driver bridge.external_interfaces bridge.hwaddr bridge.mode
bridge.mtu dns.domain dns.mode dns.search dns.zone.forward dns.zone.reverse.ipv4
dns.zone.reverse.ipv6 fan.overlay_subnet fan.type fan.underlay_subnet ipv4.address ipv4.dhcp
ipv4.dhcp.expiry ipv4.dhcp.gateway ipv4.dhcp.ranges ipv4.firewall ipv4.nat ipv4.nat.address
ipv4.nat.order ipv4.ovn.ranges ipv4.routes ipv4.routing ipv6.address ipv6.dhcp
ipv6.dhcp.expiry ipv6.dhcp.ranges ipv6.dhcp.stateful ipv6.firewall ipv6.nat ipv6.nat.address
ipv6.nat.order ipv6.ovn.ranges ipv6.routes ipv6.routing maas.subnet.ipv4 maas.subnet.ipv6
raw.dnsmasq security.acls security.acls.default.egress.action
security.acls.default.egress.logged security.acls.default.ingress.action
security.acls.default.ingress.logged tunnel.x.group tunnel.x.id tunnel.x.interface
tunnel.x.local tunnel.x.port tunnel.x.protocol tunnel.x.remote tunnel.x.ttl
""".split()

# A valid value for every key, so the "not supported yet" answer is about the key alone.
VALID = {
    "bgp.ipv4.nexthop": "10.0.0.1", "bgp.ipv6.nexthop": "fd00::1",
    "bgp.peers.x.address": "10.0.0.2", "bgp.peers.x.asn": "65000",
    "bgp.peers.x.password": "s", "bgp.peers.x.holdtime": "90",
    "bridge.driver": "native", "bridge.external_interfaces": "eth1",
    "bridge.hwaddr": "00:16:3e:00:00:01", "bridge.mode": "standard", "bridge.mtu": "1400",
    "dns.domain": "lab", "dns.mode": "dynamic", "dns.search": "lab,example.org",
    "dns.zone.forward": "z.example", "dns.zone.reverse.ipv4": "r4", "dns.zone.reverse.ipv6": "r6",
    "fan.overlay_subnet": "240.0.0.0/8", "fan.type": "vxlan", "fan.underlay_subnet": "auto",
    "ipv4.address": "10.9.8.1/24", "ipv4.dhcp": "true", "ipv4.dhcp.expiry": "2h",
    "ipv4.dhcp.gateway": "10.9.8.254", "ipv4.dhcp.ranges": "10.9.8.10-10.9.8.20",
    "ipv4.firewall": "true", "ipv4.nat": "true", "ipv4.nat.address": "192.0.2.1",
    "ipv4.nat.order": "after", "ipv4.ovn.ranges": "10.9.8.100-10.9.8.110",
    "ipv4.routes": "10.50.0.0/16", "ipv4.routing": "false",
    "ipv6.address": "fd42:1:2:3::1/64", "ipv6.dhcp": "true", "ipv6.dhcp.expiry": "3h",
    "ipv6.dhcp.ranges": "fd42:1:2:3::10-fd42:1:2:3::ff", "ipv6.dhcp.stateful": "true",
    "ipv6.firewall": "false", "ipv6.nat": "true", "ipv6.nat.address": "fd00::2",
    "ipv6.nat.order": "before", "ipv6.ovn.ranges": "fd42:1:2:3::100-fd42:1:2:3::1ff",
    "ipv6.routes": "fd50::/48", "ipv6.routing": "true",
    "maas.subnet.ipv4": "m4", "maas.subnet.ipv6": "m6", "raw.dnsmasq": "log-dhcp",
    "security.acls": "a1", "security.acls.default.egress.action": "drop",
    "security.acls.default.egress.logged": "true",
    "security.acls.default.ingress.action": "allow",
    "security.acls.default.ingress.logged": "false",
    "tunnel.x.group": "239.0.0.1", "tunnel.x.id": "7", "tunnel.x.interface": "eth0",
    "tunnel.x.local": "10.0.0.1", "tunnel.x.port": "4789", "tunnel.x.protocol": "vxlan",
    "tunnel.x.remote": "10.0.0.2", "tunnel.x.ttl": "64",
}
NOT_YET = {k for k in LXD_50_KEYS if k.split(".")[0] in ("bgp", "fan", "tunnel", "maas")
           or k.startswith("dns.zone.")
           or k in ("ipv4.ovn.ranges", "ipv6.ovn.ranges")}


def test_table_has_exactly_lxd_50_keys():
    named = set(bridge_keys.KEYS)
    for _pattern, parts in bridge_keys.PATTERNS:
        prefix = "tunnel.x." if "tunnel" in _pattern.pattern else "bgp.peers.x."
        named |= {prefix + p for p in parts}
    assert named == set(LXD_50_KEYS)
    assert set(VALID) == set(LXD_50_KEYS)


@pytest.mark.parametrize("key", sorted(NOT_YET))
def test_key_not_implemented_is_400_naming_it(key):
    with pytest.raises(BadRequest) as exc:
        bc.validate({key: VALID[key]})
    assert exc.value.code == 400
    assert f"'{key}'" in exc.value.message and "not supported by Corral yet" in exc.value.message


@pytest.mark.parametrize("key, value", [("bridge.driver", "openvswitch"), ("bridge.mode", "fan"),
                                        ("dns.mode", "managed")])
def test_value_not_implemented_is_400_naming_key_and_value(key, value):
    with pytest.raises(BadRequest, match=f"'{key}={value}' is valid in LXD but not supported"):
        bc.validate({key: value})


def test_every_implemented_key_is_accepted_and_stored():
    implemented = {k: v for k, v in VALID.items() if k not in NOT_YET}
    assert {"ipv6.nat", "ipv6.dhcp.stateful", "ipv6.routing", "ipv6.firewall"} <= set(implemented)
    assert bc.validate(implemented) == implemented


@pytest.mark.parametrize("config, words", [
    ({"ipv6.address": "fd42::1"}, "needs a prefix"),
    ({"ipv6.address": "fd42::/64"}, "subnet's own address"),
    ({"ipv6.address": "10.1.2.1/24"}, "'ipv6.address'"),
    ({"ipv6.address": "fe80::1/64"}, "not a global or unique-local"),
    ({"ipv6.address": "fd42::1/127"}, "between /8 and /126"),
    ({"ipv6.nat": "maybe"}, "not a boolean"),
    ({"ipv6.dhcp.stateful": "2"}, "not a boolean"),
    ({"ipv6.dhcp.ranges": "fd42::10"}, "START-END"),
    ({"ipv6.address": "fd42::1/64", "ipv6.dhcp.ranges": "fd43::2-fd43::9"}, "not inside"),
    ({"ipv6.dhcp.expiry": "10s"}, "at least 2m"),
    ({"ipv6.nat.address": "10.0.0.1"}, "IPv6 address"),
    ({"ipv4.nat.order": "middle"}, "one of: before, after"),
    ({"ipv4.routes": "10.1.0.0/33"}, "ipv4.routes"),
    ({"tunnel.t1.protocol": "ipip"}, "one of: gre, vxlan"),
    ({"bgp.peers.p.asn": "0"}, "between 1 and 4294967294"),
    ({"dns.mode": "static"}, "one of: dynamic, managed, none"),
    ({"ipv6.adress": "auto"}, "Invalid config key 'ipv6.adress'"),
    ({"tunnel.t1.colour": "red"}, "Invalid config key 'tunnel.t1.colour'"),
])
def test_bad_values_are_400_naming_the_key(config, words):
    with pytest.raises(BadRequest) as exc:
        bc.validate(config)
    assert exc.value.code == 400 and words in exc.value.message


def test_ipv6_defaults_like_lxd():
    assert bc.validate({"ipv6.address": "auto"})["ipv6.nat"] == "true"
    assert "ipv6.nat" not in bc.validate({"ipv6.address": "fd42::1/64"})
    assert bc.validate({})["ipv6.address"] == "none"
    assert bc.validate({"ipv6.nat.address": ""}) == bc.validate({})  # "" means unset
    cfg = bc.validate({"ipv6.address": "fd42::1/64", "ipv6.dhcp.stateful": "true"})
    assert bc.dhcp6_ranges(cfg) == [(IPv6Address("fd42::2"),
                                     IPv6Address("fd42::ffff:ffff:ffff:ffff"))]


# -- ULA choice ----------------------------------------------------------------------------------

class Scripted:
    def __init__(self, *global_ids: int) -> None:
        self.values = list(global_ids)

    def randrange(self, stop: int) -> int:
        assert stop == 2**40
        return self.values.pop(0)


def test_ula_is_a_random_fd_slash_64():
    net = pick_free_ula_subnet([], Scripted(0x1234567890), host_networks=[])
    assert net == IPv6Network("fd12:3456:7890::/64")


def test_ula_avoids_host_and_managed_subnets():
    host = [IPv6Network("fd12:3456:7890::/48")]
    taken = [IPv6Network("fdaa:bbbb:cccc::/64"), IPv4Network("10.0.0.0/8")]
    rng = Scripted(0x1234567890, 0xAABBBBCCCC, 0x0102030405)
    assert pick_free_ula_subnet(taken, rng, host) == IPv6Network("fd01:0203:0405::/64")


def test_ula_gives_up_with_a_conflict_when_fd00_8_is_covered():
    with pytest.raises(Conflict, match="explicit CIDR"):
        pick_free_ula_subnet([], Scripted(*range(1000)), [IPv6Network("fd00::/8")])


# -- dnsmasq's command line ---------------------------------------------------------------------

STATE = Path("/s")


def argv(**config: str) -> list[str]:
    return dnsmasq.args("br1", bc.validate(config), STATE)


def test_dnsmasq_slaac_with_stateless_dhcpv6():
    a = argv(**{"ipv4.address": "none", "ipv6.address": "fd42::1/64"})
    assert "--listen-address=fd42::1" in a and "--enable-ra" in a
    assert "--dhcp-range=::,constructor:br1,ra-stateless,ra-names" in a
    assert not any(x.startswith("--ra-param") for x in a)
    assert f"--dhcp-leasefile={STATE / dnsmasq.LEASES_FILE}" in a


def test_dnsmasq_stateful_dhcpv6_ranges_and_expiry():
    a = argv(**{"ipv4.address": "10.1.2.1/24", "ipv6.address": "fd42::1/64",
                "ipv6.dhcp.stateful": "true", "ipv6.dhcp.expiry": "2h",
                "ipv6.dhcp.ranges": "fd42::10-fd42::20,fd42::30-fd42::40"})
    assert "--dhcp-range=fd42::10,fd42::20,64,7200s" in a
    assert "--dhcp-range=fd42::30,fd42::40,64,7200s" in a
    assert "--dhcp-range=10.1.2.2,10.1.2.254,255.255.255.0,3600s" in a
    assert a.count("--dhcp-authoritative") == 1


def test_dnsmasq_ra_only_and_no_default_router_without_routing():
    a = argv(**{"ipv4.address": "none", "ipv6.address": "fd42::1/64", "ipv6.dhcp": "false",
                "ipv6.routing": "false"})
    assert "--dhcp-range=::,constructor:br1,ra-only" in a
    assert "--ra-param=br1,600,0" in a
    assert not any(x.startswith("--dhcp-leasefile") for x in a)


def test_dnsmasq_ipv4_only_has_no_ra_and_options():
    a = argv(**{"ipv4.address": "10.1.2.1/24", "ipv4.dhcp.gateway": "10.1.2.254",
                "dns.search": "a.example, b.example", "raw.dnsmasq": "log-dhcp"})
    assert "--enable-ra" not in a
    assert "--dhcp-option-force=3,10.1.2.254" in a
    assert "--dhcp-option-force=119,a.example,b.example" in a
    assert f"--conf-file={STATE / dnsmasq.RAW_FILE}" in a


def test_dnsmasq_dns_mode_none_registers_no_names():
    a = argv(**{"ipv4.address": "10.1.2.1/24", "dns.mode": "none"})
    assert "--dhcp-ignore-names" in a and not any(x.startswith("--domain=") for x in a)


# -- nftables text -------------------------------------------------------------------------------

def test_nft_v6_nat_firewall_and_routing():
    v6 = IPv6Network("fd42::/64")
    text = nft.ruleset("n1", "br1", [nft.Family(6, v6, nat=True)])
    assert 'ip6 saddr fd42::/64 oifname != "br1" masquerade' in text
    assert "priority 99" in text and "udp dport { 53, 547 } accept" in text
    assert "nd-router-solicit" in text and "ip saddr" not in text
    text = nft.ruleset("n1", "br1", [nft.Family(6, v6, nat=True, nat_address="fd00::9",
                                                nat_order="after", routing=False)])
    assert "snat ip6 to fd00::9" in text and "priority 101" in text
    assert 'meta nfproto ipv6 iifname "br1" oifname != "br1" drop' in text
    text = nft.ruleset("n1", "br1", [nft.Family(6, v6, firewall=False)])
    assert "accept\n" not in text.split("input_accept")[1] and "masquerade" not in text


def test_nft_both_families():
    text = nft.ruleset("n1", "br1", [nft.Family(4, IPv4Network("10.1.2.0/24"), nat=True),
                                     nft.Family(6, IPv6Network("fd42::/64"), nat=True)])
    assert "postrouting_nat4" in text and "postrouting_nat6" in text
    assert 'ip saddr 10.1.2.0/24 oifname != "br1" masquerade' in text


# -- leases --------------------------------------------------------------------------------------

def test_leases_v4_and_v6(tmp_path):
    (tmp_path / dnsmasq.LEASES_FILE).write_text(
        "1700000000 00:16:3e:aa:bb:cc 10.1.2.7 c1 01:00:16:3e:aa:bb:cc\n"
        "duid 00:01:00:01:2c:aa:bb:cc:00:16:3e:00:00:01\n"
        "1700000001 1 fd42::7 c1 00:03:00:01:00:16:3e:aa:bb:cc\n"
        "1700000002 2 fd42::8 * 00:01:00:01:2c:aa:bb:cc:00:16:3e:11:22:33\n"
        "1700000003 3 fd42::9 * 00:02:00:00:ab:11:01:02\n")
    leases = dnsmasq.read_leases(tmp_path)
    assert [(x["address"], x["hwaddr"], x["hostname"], x["family"]) for x in leases] == [
        ("10.1.2.7", "00:16:3e:aa:bb:cc", "c1", "inet"),
        ("fd42::7", "00:16:3e:aa:bb:cc", "c1", "inet6"),
        ("fd42::8", "00:16:3e:11:22:33", "", "inet6"),
        ("fd42::9", "", "", "inet6")]


# -- forwarding ----------------------------------------------------------------------------------

def test_ipv6_forwarding_moves_accept_ra_1_to_2_first(tmp_path, monkeypatch):
    for name, ra in (("all", "1"), ("default", "1"), ("eth0", "0"), ("eth1", "1"),
                     ("eth2", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "accept_ra").write_text(ra + "\n")
        (tmp_path / name / "forwarding").write_text("0\n")
    monkeypatch.setattr(sysctl, "_default_routes6", lambda: {("fd00::1", 2)})
    sysctl.enable_ipv6_forwarding(tmp_path)
    ra = {p.name: (p / "accept_ra").read_text().strip() for p in tmp_path.iterdir()}
    assert ra == {"all": "2", "default": "2", "eth0": "0", "eth1": "2", "eth2": "2"}
    assert {(p / "forwarding").read_text().strip() for p in tmp_path.iterdir()} == {"1"}


def test_ipv6_forwarding_refuses_silently_losing_the_default_route(tmp_path, monkeypatch):
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "forwarding").write_text("0\n")
    routes = iter([{("fe80::1", 2)}, set()])
    monkeypatch.setattr(sysctl, "_default_routes6", lambda: next(routes))
    with pytest.raises(Exception, match="ipv6.routing=false"):
        sysctl.enable_ipv6_forwarding(tmp_path)
