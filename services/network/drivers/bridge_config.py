"""Config keys of a managed bridge network (LXD's names), their checks and defaults.

``validate`` returns the config as it should be stored, with the defaults LXD itself
writes at create time (``ipv4.address``, ``ipv4.nat``, ``ipv6.address``); the other
defaults stay implicit and are read through ``setting``, so a stored config looks like
LXD's. ``resolve_auto`` turns ``ipv4.address=auto`` into a concrete gateway/prefix.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Callable

from shared.errors import BadRequest, Conflict

from ..subnet import host_ipv4_networks, overlapping, pick_free_ipv4_subnet
from .base import parse_bool

DEFAULTS: dict[str, str] = {
    "ipv4.dhcp": "true",
    "ipv4.dhcp.expiry": "1h",
    "ipv4.nat": "false",
    "dns.domain": "corral",
    "bridge.driver": "native",
    "ipv6.address": "none",
}

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$", re.I)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)
_EXPIRY = re.compile(r"^(\d+)([smhdw]?)$")
_EXPIRY_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def setting(config: dict[str, str], key: str) -> str:
    """A key's value, or its implicit default."""
    return config.get(key, DEFAULTS.get(key, ""))


def gateway(config: dict[str, str]) -> IPv4Interface | None:
    """The bridge's IPv4 address with prefix, None for ``none`` (or unresolved ``auto``)."""
    value = setting(config, "ipv4.address")
    if value in ("", "none", "auto"):
        return None
    return IPv4Interface(value)


def dhcp_ranges(config: dict[str, str]) -> list[tuple[IPv4Address, IPv4Address]]:
    """Configured ranges, or LXD's default: the 2nd to the last-but-one host address."""
    gw = gateway(config)
    if gw is None:
        return []
    raw = setting(config, "ipv4.dhcp.ranges")
    if raw:
        return [_parse_range(r, gw.network) for r in raw.split(",")]
    net = gw.network
    return [(net.network_address + 2, net.broadcast_address - 1)]


def expiry_seconds(value: str) -> int | None:
    """Lease time in seconds, None for ``infinite``."""
    if value == "infinite":
        return None
    m = _EXPIRY.match(value)
    if not m:
        raise BadRequest(f"Invalid value for 'ipv4.dhcp.expiry': {value!r} "
                         "(use a number with s, m, h, d or w, e.g. 1h, or 'infinite')")
    seconds = int(m.group(1)) * _EXPIRY_UNITS[m.group(2)]
    if seconds < 120:
        raise BadRequest("Invalid value for 'ipv4.dhcp.expiry': dnsmasq needs at least 2m")
    return seconds


def _check_address(value: str) -> None:
    if value in ("auto", "none"):
        return
    try:
        iface = IPv4Interface(value)
    except ValueError as e:
        raise BadRequest(f"Invalid value for 'ipv4.address': {value!r} (use auto, none, "
                         "or the bridge address with a prefix like 10.1.2.1/24)") from e
    if "/" not in value:
        raise BadRequest(f"Invalid value for 'ipv4.address': {value!r} needs a prefix "
                         "length, e.g. 10.1.2.1/24")
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        raise BadRequest(f"Invalid value for 'ipv4.address': prefix /{net.prefixlen} "
                         "must be between /8 and /30")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise BadRequest(f"Invalid value for 'ipv4.address': {iface.ip} is the network or "
                         "broadcast address of its subnet, pick a host address like "
                         f"{net.network_address + 1}/{net.prefixlen}")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise BadRequest(f"Invalid value for 'ipv4.address': {iface.ip} is not a unicast "
                         "host address")


def _parse_range(text: str, net: IPv4Network | None) -> tuple[IPv4Address, IPv4Address]:
    try:
        start_s, end_s = text.strip().split("-")
        start, end = IPv4Address(start_s.strip()), IPv4Address(end_s.strip())
    except ValueError as e:
        raise BadRequest(f"Invalid value for 'ipv4.dhcp.ranges': {text!r} "
                         "(use START-END[,START-END], e.g. 10.1.2.10-10.1.2.99)") from e
    if start > end:
        raise BadRequest(f"Invalid value for 'ipv4.dhcp.ranges': {text!r} starts after it ends")
    if net is not None and (start not in net or end not in net):
        raise BadRequest(f"Invalid value for 'ipv4.dhcp.ranges': {text!r} is not inside "
                         f"the bridge subnet {net}")
    return start, end


def _check_mtu(value: str) -> None:
    if not value.isdigit() or not 1280 <= int(value) <= 16384:
        raise BadRequest(f"Invalid value for 'bridge.mtu': {value!r} "
                         "(an integer between 1280 and 16384)")


def _check_hwaddr(value: str) -> None:
    if not _MAC.match(value) or int(value[:2], 16) & 1:
        raise BadRequest(f"Invalid value for 'bridge.hwaddr': {value!r} (a unicast MAC "
                         "like 00:16:3e:12:34:56)")


def _check_domain(value: str) -> None:
    if not _DOMAIN.match(value):
        raise BadRequest(f"Invalid value for 'dns.domain': {value!r} (a DNS name made of "
                         "letters, digits and '-' labels, e.g. corral or lab.example)")


def _check_ipv6(value: str) -> None:
    if value != "none":
        raise BadRequest(f"Invalid value for 'ipv6.address': {value!r}; managed IPv6 is "
                         "not supported yet, only 'none' is accepted")


def _check_driver(value: str) -> None:
    if value != "native":
        raise BadRequest(f"Invalid value for 'bridge.driver': {value!r}; only 'native' "
                         "is supported (no Open vSwitch kernel datapath here)")


_CHECKS: dict[str, Callable[[str, str], None]] = {
    "ipv4.address": lambda k, v: _check_address(v),
    "ipv4.nat": parse_bool,
    "ipv4.dhcp": parse_bool,
    "ipv4.dhcp.ranges": lambda k, v: [_parse_range(r, None) for r in v.split(",")],
    "ipv4.dhcp.expiry": lambda k, v: expiry_seconds(v),
    "dns.domain": lambda k, v: _check_domain(v),
    "bridge.mtu": lambda k, v: _check_mtu(v),
    "bridge.hwaddr": lambda k, v: _check_hwaddr(v),
    "bridge.driver": lambda k, v: _check_driver(v),
    "ipv6.address": lambda k, v: _check_ipv6(v),
}


def validate(config: dict[str, str]) -> dict[str, str]:
    """Check every key; return the config with LXD's stored defaults filled in."""
    if not isinstance(config, dict):
        raise BadRequest("Network config must be a map of string keys to string values")
    out: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadRequest(f"Invalid config entry {key!r}: keys and values must be strings")
        if key.startswith("user."):
            out[key] = value
            continue
        check = _CHECKS.get(key)
        if check is None:
            known = ", ".join(sorted(_CHECKS))
            raise BadRequest(f"Invalid config key {key!r} for a bridge network "
                             f"(known keys: {known}, user.*)")
        check(key, value)
        out[key] = value
    if "ipv4.address" not in out:
        out["ipv4.address"] = "auto"
    if out["ipv4.address"] == "auto" and "ipv4.nat" not in out:
        out["ipv4.nat"] = "true"
    out.setdefault("ipv6.address", "none")
    gw = gateway(out)
    if gw is not None and "ipv4.dhcp.ranges" in out:
        dhcp_ranges(out)  # now that the subnet is known, ranges must fall inside it
    return out


def resolve_auto(config: dict[str, str], taken: list[IPv4Network],
                 own_ifname: str | None = None) -> dict[str, str]:
    """Replace ``ipv4.address=auto`` with ``10.x.y.1/24``; check an explicit one is free.

    ``taken`` are the subnets of Corral's other networks; ``own_ifname`` is this
    network's bridge, whose own address must not count as a collision on update.
    """
    out = dict(config)
    if out.get("ipv4.address") == "auto":
        net = pick_free_ipv4_subnet(taken, host_networks=host_ipv4_networks(own_ifname))
        out["ipv4.address"] = f"{net.network_address + 1}/{net.prefixlen}"
        dhcp_ranges(out)  # explicit ranges must fall inside the subnet just picked
        return out
    gw = gateway(out)
    if gw is not None:
        clash = overlapping(gw.network, list(taken) + host_ipv4_networks(own_ifname))
        if clash is not None:
            raise Conflict(f"Subnet {gw.network} of 'ipv4.address' overlaps {clash}, "
                           "already used on this host; pick another or use auto")
    return out
