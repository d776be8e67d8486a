"""Pure logic of network ACLs and forwards: LXD's rule checks, the nft statements a rule
and a forward become, the order rules are tried in, static lease address checks."""

from __future__ import annotations

import pytest

from services.network import acls, forwards, leases, nic
from services.network.drivers import nft
from shared.errors import BadRequest

CFG = {"ipv4.address": "10.1.2.1/24", "ipv6.address": "fd42::1/64",
       "ipv6.dhcp.stateful": "true"}


def rule(**kw: str) -> dict[str, str]:
    return {"action": "allow", "state": "enabled", **kw}


@pytest.mark.parametrize("bad, words", [
    ({"action": "permit", "state": "enabled"}, "Action must be one of"),
    ({"action": "allow", "state": "on"}, "State must be one of"),
    (rule(protocol="sctp"), "Protocol must be one of"),
    (rule(destination_port="80"), "needs protocol tcp or udp"),
    (rule(protocol="tcp", destination_port="70000"), "Invalid destination_port"),
    (rule(protocol="tcp", destination_port="90-80"), "Invalid destination_port"),
    (rule(protocol="tcp", icmp_type="8"), "needs protocol icmp4 or icmp6"),
    (rule(protocol="icmp4", icmp_type="300"), "icmp_type"),
    (rule(protocol="icmp4", source="fd00::1"), "Cannot use IPv6 source"),
    (rule(protocol="icmp6", destination="10.0.0.1"), "Cannot use IPv4 destination"),
    (rule(source="10.0.0.1", destination="fd00::1"), "Conflicting IP family"),
    (rule(source="web-acl"), "ACL names as subjects"),
    (rule(source="10.0.0.9-10.0.0.1"), "Invalid source"),
    (rule(colour="red"), "unknown fields"),
])
def test_bad_rules_are_400_with_lxd_reasons(bad, words):
    with pytest.raises(BadRequest) as err:
        acls.check_rule("ingress", 3, bad)
    assert "ingress rule 3" in err.value.message and words in err.value.message


def test_rules_normalised_and_duplicates_refused():
    got = acls.check_rule("egress", 0, rule(source=" 10.0.0.0/8 , 10.1.1.1 ",
                                             protocol="tcp", destination_port="80, 443"))
    assert got == {"action": "allow", "state": "enabled", "source": "10.0.0.0/8,10.1.1.1",
                   "protocol": "tcp", "destination_port": "80,443"}
    with pytest.raises(BadRequest, match="Duplicate of egress rule 0"):
        acls.check_rules("egress", [rule(protocol="udp"), rule(protocol="udp")])


def test_chain_order_drop_reject_allow_then_default():
    acl = {"name": "a", "ingress": [
        acls.check_rule("ingress", 0, rule(protocol="tcp", destination_port="80")),
        acls.check_rule("ingress", 1, {"action": "reject", "state": "enabled",
                                       "source": "@internal"}),
        acls.check_rule("ingress", 2, {"action": "drop", "state": "logged",
                                       "protocol": "icmp4", "icmp_type": "8"}),
        acls.check_rule("ingress", 3, {"action": "drop", "state": "disabled",
                                       "protocol": "udp"})]}
    out = acls.chain_statements([acl], "ingress", "reject", False,
                                {4: "10.1.2.0/24", 6: None})
    assert out == [
        'meta nfproto ipv4 meta l4proto icmp icmp type 8 log prefix "corral-acl a: " drop',
        "meta nfproto ipv4 ip saddr 10.1.2.0/24 reject",
        "meta l4proto tcp tcp dport { 80 } accept",
        "reject"]


def test_forward_statements():
    rec = {"listen_address": "192.0.2.50", "config": {"target_address": "10.1.2.5"},
           "ports": [{"protocol": "tcp", "listen_port": "80,90-91",
                      "target_port": "8080-8082", "target_address": "10.1.2.6"},
                     {"protocol": "udp", "listen_port": "53", "target_port": "",
                      "target_address": "10.1.2.7"}]}
    assert forwards.dnat_statements(rec) == [
        "ip daddr 192.0.2.50 meta l4proto tcp tcp dport 80 dnat ip to 10.1.2.6:8080",
        "ip daddr 192.0.2.50 meta l4proto tcp tcp dport 90 dnat ip to 10.1.2.6:8081",
        "ip daddr 192.0.2.50 meta l4proto tcp tcp dport 91 dnat ip to 10.1.2.6:8082",
        "ip daddr 192.0.2.50 meta l4proto udp udp dport { 53 } dnat ip to 10.1.2.7",
        "ip daddr 192.0.2.50 dnat ip to 10.1.2.5"]
    text = nft.forward_ruleset("n1", forwards.dnat_statements(rec))
    assert "hook prerouting" in text and "hook output" in text


@pytest.mark.parametrize("ports, words", [
    ([{"protocol": "tcp", "listen_port": "80", "target_address": "192.0.2.1"}],
     "inside the subnet"),
    ([{"protocol": "tcp", "listen_port": "80"}], "target_address is required"),
    ([{"protocol": "tcp", "listen_port": "80-82", "target_port": "1-2",
       "target_address": "10.1.2.5"}], "as many ports"),
    ([{"protocol": "tcp", "listen_port": "80", "target_address": "10.1.2.5"},
      {"protocol": "tcp", "listen_port": "79-81", "target_address": "10.1.2.6"}],
     "already forwarded"),
    ([{"protocol": "tcp", "listen_port": "80", "target_address": "fd42::5"}],
     "IP family"),
])
def test_bad_forward_ports(ports, words):
    with pytest.raises(BadRequest, match=words):
        forwards.check_ports(ports, CFG, "n1", 4)


def test_listen_address_rules():
    assert forwards.Forwards.listen("n1", CFG, " 192.0.2.9 ") == "192.0.2.9"
    for bad, words in (("10.1.2.9", "inside the subnet"), ("0.0.0.0", "unicast"),
                       ("x", "not an IP")):
        with pytest.raises(BadRequest, match=words):
            forwards.Forwards.listen("n1", CFG, bad)


@pytest.mark.parametrize("v4, v6, words", [
    ("10.9.9.9", "", "not inside the subnet"), ("10.1.2.1", "", "gateway"),
    ("10.1.2.255", "", "broadcast"), ("10.1.2.0/24", "", "not an IPv4 address"),
    ("fd42::5", "", "not an IPv4"), ("", "fd43::5", "not inside"),
])
def test_static_lease_addresses(v4, v6, words):
    with pytest.raises(BadRequest, match=words):
        leases.check_addresses("n1", CFG, v4, v6)
    assert leases.check_addresses("n1", CFG, "10.1.2.50", "fd42::0050") == (
        "10.1.2.50", "fd42::50")


def test_routed_nic_device():
    dev = nic.validate_nic_device({"type": "nic", "nictype": "routed",
                                   "ipv4.address": "192.0.2.5, 192.0.2.6",
                                   "ipv6.address": "2001:db8::5"})
    n = nic.neutral_nic(0, dev, "veth12345678", "00:16:3e:00:00:01")
    assert (n.ipv4_addresses, n.ipv6_addresses) == (["192.0.2.5/32", "192.0.2.6/32"],
                                                    ["2001:db8::5/128"])
    assert (n.ipv4_gateway, n.ipv6_gateway) == ("169.254.0.1", "fe80::1")
    for bad, words in (({"nictype": "routed"}, "needs 'ipv4.address'"),
                       ({"nictype": "macvlan", "parent": "eth0", "ipv4.address": "1.2.3.4"},
                        "not valid for nictype"),
                       ({"network": "br0", "security.acls": "a"}, "needs 'ipv4.address'")):
        with pytest.raises(BadRequest, match=words):
            nic.validate_nic_device({"type": "nic", **bad})
