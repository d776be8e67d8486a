"""Every config key LXD 5.0 accepts on a bridge network, as one table that reads as a spec.

Each key has LXD's value rule (``check``) and whether Corral applies it (``implemented``:
True, False, or a predicate on the value, e.g. ``bridge.driver`` is applied for
``native`` but not for ``openvswitch``). A key LXD knows but Corral does not apply yet is
a 400 naming it, never silently stored and ignored; a key LXD does not know is a 400 too.
Keys with a name inside (``tunnel.NAME.*``, ``bgp.peers.NAME.*``) are matched by pattern.

The value rules follow LXD's ``Validate`` of ``driver_bridge.go`` (stable-5.0); a few are
stricter where LXD accepts anything but dnsmasq or the kernel would then fail later
(``dns.domain``, ``ipv4.dhcp.expiry``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import Callable

from shared.errors import BadRequest

from .base import parse_bool, validate_network_name

Check = Callable[[str, str], None]

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$", re.I)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)
_EXPIRY = re.compile(r"^(\d+)([smhdw]?)$")
_EXPIRY_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def bad(key: str, value: str, why: str) -> BadRequest:
    return BadRequest(f"Invalid value for {key!r}: {value!r} {why}")


# -- LXD's value rules ------------------------------------------------------------------------

def any_value(key: str, value: str) -> None:
    """LXD's ``IsAny``: free text."""


def boolean(key: str, value: str) -> None:
    parse_bool(key, value)


def one_of(*allowed: str) -> Check:
    def check(key: str, value: str) -> None:
        if value not in allowed:
            raise bad(key, value, f"(one of: {', '.join(allowed)})")
    return check


def integer(low: int, high: int) -> Check:
    def check(key: str, value: str) -> None:
        if not re.fullmatch(r"-?\d+", value) or not low <= int(value) <= high:
            raise bad(key, value, f"(an integer between {low} and {high})")
    return check


def mac(key: str, value: str) -> None:
    if not _MAC.match(value) or int(value[:2], 16) & 1:
        raise bad(key, value, "(a unicast MAC like 00:16:3e:12:34:56)")


def mtu(key: str, value: str) -> None:
    if not value.isdigit() or not 1280 <= int(value) <= 16384:
        raise bad(key, value, "(an integer between 1280 and 16384)")


def domain(key: str, value: str) -> None:
    if not _DOMAIN.match(value):
        raise bad(key, value, "(a DNS name made of letters, digits and '-' labels, "
                  "e.g. corral or lab.example)")


def domain_list(key: str, value: str) -> None:
    for part in value.split(","):
        domain(key, part.strip())


def address(version: int | None) -> Check:
    """A single address (LXD's ``IsNetworkAddress``, ``...V4``, ``...V6``)."""
    def check(key: str, value: str) -> None:
        try:
            ip = ip_address(value)
        except ValueError:
            ip = None
        if ip is None or (version and ip.version != version):
            kind = {4: "an IPv4", 6: "an IPv6", None: "an IP"}[version]
            raise bad(key, value, f"(must be {kind} address without a prefix)")
    return check


def cidr_list(version: int) -> Check:
    """Comma-separated subnets (LXD's ``IsNetworkV4List``/``V6List``)."""
    def check(key: str, value: str) -> None:
        for part in value.split(","):
            try:
                net = ip_network(part.strip(), strict=True)
            except ValueError:
                net = None
            if net is None or net.version != version or "/" not in part:
                raise bad(key, value, f"(comma-separated IPv{version} subnets like "
                          f"{'10.1.0.0/16' if version == 4 else 'fd12:3456::/48'})")
    return check


def subnet_v4(key: str, value: str) -> None:
    cidr_list(4)(key, value)
    if "," in value:
        raise bad(key, value, "(one IPv4 subnet)")


def range_list(version: int) -> Check:
    """``START-END[,START-END]`` (LXD's ``IsNetworkRangeV4List``/``V6List``)."""
    def check(key: str, value: str) -> None:
        parse_ranges(key, value, version)
    return check


def parse_ranges(key: str, value: str, version: int,
                 subnet: IPv4Network | IPv6Network | None = None
                 ) -> list[tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address]]:
    """Ranges as address pairs; inside ``subnet`` when it is given."""
    out = []
    for text in value.split(","):
        try:
            start_s, end_s = text.strip().split("-")
            start, end = ip_address(start_s.strip()), ip_address(end_s.strip())
        except ValueError:
            start = end = None
        if start is None or start.version != version or end.version != version:
            example = "10.1.2.10-10.1.2.99" if version == 4 else "fd12::10-fd12::ff"
            raise bad(key, text, f"(use START-END[,START-END], e.g. {example})")
        if start > end:
            raise bad(key, text, "starts after it ends")
        if subnet is not None and (start not in subnet or end not in subnet):
            raise bad(key, text, f"is not inside the bridge subnet {subnet}")
        out.append((start, end))
    return out


def expiry_seconds(key: str, value: str) -> int | None:
    """Lease time in seconds, None for ``infinite``; dnsmasq needs at least 2 minutes."""
    if value == "infinite":
        return None
    m = _EXPIRY.match(value)
    if not m:
        raise bad(key, value, "(use a number with s, m, h, d or w, e.g. 1h, or 'infinite')")
    seconds = int(m.group(1)) * _EXPIRY_UNITS[m.group(2)]
    if seconds < 120:
        raise bad(key, value, "is too short: dnsmasq needs at least 2m")
    return seconds


def expiry(key: str, value: str) -> None:
    expiry_seconds(key, value)


def ipv4_address(key: str, value: str) -> None:
    """``auto``, ``none`` or the bridge's address with its prefix (``10.1.2.1/24``)."""
    if value in ("auto", "none"):
        return
    try:
        iface = IPv4Interface(value)
    except ValueError as e:
        raise bad(key, value, "(use auto, none, or the bridge address with a prefix like "
                  "10.1.2.1/24)") from e
    if "/" not in value:
        raise bad(key, value, "needs a prefix length, e.g. 10.1.2.1/24")
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        raise bad(key, value, f"has prefix /{net.prefixlen}: it must be between /8 and /30")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise bad(key, value, "is the network or broadcast address of its subnet, pick a "
                  f"host address like {net.network_address + 1}/{net.prefixlen}")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise bad(key, value, "is not a unicast host address")


def ipv6_address(key: str, value: str) -> None:
    """``auto``, ``none`` or the bridge's address with its prefix (``fd42:1:2:3::1/64``)."""
    if value in ("auto", "none"):
        return
    try:
        iface = IPv6Interface(value)
    except ValueError as e:
        raise bad(key, value, "(use auto, none, or the bridge address with a prefix like "
                  "fd42:1:2:3::1/64)") from e
    if "/" not in value:
        raise bad(key, value, "needs a prefix length, e.g. fd42:1:2:3::1/64")
    net = iface.network
    if not 8 <= net.prefixlen <= 126:
        raise bad(key, value, f"has prefix /{net.prefixlen}: it must be between /8 and "
                  "/126 (/64 for SLAAC)")
    if iface.ip == net.network_address:
        raise bad(key, value, "is the subnet's own address (not usable), pick a host "
                  f"address like {net.network_address + 1}/{net.prefixlen}")
    ip = iface.ip
    if ip.is_loopback or ip.is_multicast or ip.is_link_local or ip.is_unspecified:
        raise bad(key, value, "is not a global or unique-local unicast address")


def interface_list(key: str, value: str) -> None:
    for part in value.split(","):
        try:
            validate_network_name(part.strip())
        except BadRequest as exc:
            raise bad(key, value, f"({exc.message})") from None


def port(key: str, value: str) -> None:
    integer(0, 65535)(key, value)


# -- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    check: Check
    implemented: bool | Callable[[str], bool] = True

    def applies(self, value: str) -> bool:
        return self.implemented(value) if callable(self.implemented) else self.implemented


NO = False  # LXD 5.0 accepts it; Corral does not apply it yet: 400 naming the key
ACL_ACTION = one_of("allow", "reject", "drop")

KEYS: dict[str, Key] = {
    "bgp.ipv4.nexthop": Key(address(4), NO),
    "bgp.ipv6.nexthop": Key(address(6), NO),
    "bridge.driver": Key(one_of("native", "openvswitch"), lambda v: v == "native"),
    "bridge.external_interfaces": Key(interface_list),
    "bridge.hwaddr": Key(mac),
    "bridge.mode": Key(one_of("standard", "fan"), lambda v: v == "standard"),
    "bridge.mtu": Key(mtu),
    "dns.domain": Key(domain),
    "dns.mode": Key(one_of("dynamic", "managed", "none"), lambda v: v != "managed"),
    "dns.search": Key(domain_list),
    "dns.zone.forward": Key(any_value, NO),
    "dns.zone.reverse.ipv4": Key(any_value, NO),
    "dns.zone.reverse.ipv6": Key(any_value, NO),
    "fan.overlay_subnet": Key(subnet_v4, NO),
    "fan.type": Key(one_of("vxlan", "ipip"), NO),
    "fan.underlay_subnet": Key(lambda k, v: None if v == "auto" else subnet_v4(k, v), NO),
    "ipv4.address": Key(ipv4_address),
    "ipv4.dhcp": Key(boolean),
    "ipv4.dhcp.expiry": Key(expiry),
    "ipv4.dhcp.gateway": Key(address(4)),
    "ipv4.dhcp.ranges": Key(range_list(4)),
    "ipv4.firewall": Key(boolean),
    "ipv4.nat": Key(boolean),
    "ipv4.nat.address": Key(address(4)),
    "ipv4.nat.order": Key(one_of("before", "after")),
    "ipv4.ovn.ranges": Key(range_list(4), NO),
    "ipv4.routes": Key(cidr_list(4)),
    "ipv4.routing": Key(boolean),
    "ipv6.address": Key(ipv6_address),
    "ipv6.dhcp": Key(boolean),
    "ipv6.dhcp.expiry": Key(expiry),
    "ipv6.dhcp.ranges": Key(range_list(6)),
    "ipv6.dhcp.stateful": Key(boolean),
    "ipv6.firewall": Key(boolean),
    "ipv6.nat": Key(boolean),
    "ipv6.nat.address": Key(address(6)),
    "ipv6.nat.order": Key(one_of("before", "after")),
    "ipv6.ovn.ranges": Key(range_list(6), NO),
    "ipv6.routes": Key(cidr_list(6)),
    "ipv6.routing": Key(boolean),
    "maas.subnet.ipv4": Key(any_value, NO),
    "maas.subnet.ipv6": Key(any_value, NO),
    "raw.dnsmasq": Key(any_value),
    "security.acls": Key(any_value),  # names checked against the ACLs by the service
    "security.acls.default.egress.action": Key(ACL_ACTION),
    "security.acls.default.egress.logged": Key(boolean),
    "security.acls.default.ingress.action": Key(ACL_ACTION),
    "security.acls.default.ingress.logged": Key(boolean),
}

# Keys with a user-chosen NAME in the middle: (pattern, {last part: Key}).
PATTERNS: list[tuple[re.Pattern[str], dict[str, Key]]] = [
    (re.compile(r"^tunnel\.([^.]+)\.([^.]+)$"), {
        "protocol": Key(one_of("gre", "vxlan"), NO),
        "local": Key(address(None), NO),
        "remote": Key(address(None), NO),
        "port": Key(port, NO),
        "group": Key(address(None), NO),
        "id": Key(integer(0, 2**63 - 1), NO),
        "interface": Key(interface_list, NO),
        "ttl": Key(integer(0, 255), NO),
    }),
    (re.compile(r"^bgp\.peers\.([^.]+)\.([^.]+)$"), {
        "address": Key(address(None), NO),
        "asn": Key(integer(1, 4294967294), NO),
        "password": Key(any_value, NO),
        "holdtime": Key(integer(9, 65535), NO),
    }),
]


def lookup(key: str) -> Key | None:
    """The table entry for ``key`` (exact or by pattern); None if LXD 5.0 has no such key."""
    if key in KEYS:
        return KEYS[key]
    for pattern, parts in PATTERNS:
        m = pattern.match(key)
        if m:
            return parts.get(m.group(2))
    return None


def check_key(key: str, value: str) -> None:
    """400 for a key LXD does not know, a bad value, or a key Corral does not apply yet."""
    if key.startswith("user."):
        return
    entry = lookup(key)
    if entry is None:
        raise BadRequest(f"Invalid config key {key!r} for a bridge network (see LXD's "
                         "bridge network keys; user.* is free-form)")
    entry.check(key, value)
    if not entry.applies(value):
        shown = key if entry.implemented is NO else f"{key}={value}"
        why = f" on this host: {ovs_missing()}" if shown == "bridge.driver=openvswitch" else ""
        raise BadRequest(f"Config key {shown!r} is valid in LXD but not supported by "
                         f"Corral yet{why}")


def ovs_missing() -> str:
    """Why Open vSwitch bridges cannot be made here (checked, not assumed)."""
    if shutil.which("ovs-vsctl") is None:
        return ("Open vSwitch is not installed (no ovs-vsctl), and this kernel cannot load "
                "the openvswitch module (the userspace datapath would need ovs-vswitchd "
                "with datapath_type=netdev); use bridge.driver=native")
    if not Path("/sys/module/openvswitch").exists():
        return ("this kernel has no openvswitch module and cannot load one; Corral does not "
                "drive the userspace (netdev) datapath; use bridge.driver=native")
    return "Corral does not drive Open vSwitch bridges yet; use bridge.driver=native"
