"""A bridge network's config: validation against the key table, defaults, derived values.

``validate`` returns the config as it should be stored, with the defaults LXD itself
writes at create time (``ipv4.address``, ``ipv4.nat``, ``ipv6.address``, ``ipv6.nat``
when ``ipv6.address=auto``); the other defaults stay implicit and are read through
``setting``, so a stored config looks like LXD's. ``resolve_auto`` turns ``auto``
addresses into concrete ones, chosen from local facts only (see ``subnet``).

Corral's one deviation from LXD's defaults: a bridge created without ``ipv6.address``
gets ``none`` (LXD picks ``auto`` when the kernel has IPv6). Test worlds and hosts here
must not grow router advertisements and a default IPv6 route unless asked.
"""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Union

from shared.errors import BadRequest, Conflict

from ..subnet import (
    host_ipv4_networks,
    host_ipv6_networks,
    overlapping,
    pick_free_ipv4_subnet,
    pick_free_ula_subnet,
)
from .base import parse_bool
from .bridge_keys import check_key, parse_ranges
from .bridge_keys import expiry_seconds as _expiry_seconds

AnyNetwork = Union[IPv4Network, IPv6Network]

DEFAULTS: dict[str, str] = {
    "bridge.driver": "native",
    "bridge.mode": "standard",
    "dns.domain": "corral",
    "dns.mode": "dynamic",
    "ipv4.dhcp": "true",
    "ipv4.dhcp.expiry": "1h",
    "ipv4.firewall": "true",
    "ipv4.nat": "false",
    "ipv4.nat.order": "before",
    "ipv4.routing": "true",
    "ipv6.address": "none",
    "ipv6.dhcp": "true",
    "ipv6.dhcp.expiry": "1h",
    "ipv6.dhcp.stateful": "false",
    "ipv6.firewall": "true",
    "ipv6.nat": "false",
    "ipv6.nat.order": "before",
    "ipv6.routing": "true",
}


def setting(config: dict[str, str], key: str) -> str:
    """A key's value, or its implicit default."""
    return config.get(key, DEFAULTS.get(key, ""))


def flag(config: dict[str, str], key: str) -> bool:
    """A boolean key's value, or its implicit default."""
    return parse_bool(key, setting(config, key))


def gateway(config: dict[str, str]) -> IPv4Interface | None:
    """The bridge's IPv4 address with prefix, None for ``none`` (or unresolved ``auto``)."""
    value = setting(config, "ipv4.address")
    if value in ("", "none", "auto"):
        return None
    return IPv4Interface(value)


def gateway6(config: dict[str, str]) -> IPv6Interface | None:
    """The bridge's IPv6 address with prefix, None for ``none`` (or unresolved ``auto``)."""
    value = setting(config, "ipv6.address")
    if value in ("", "none", "auto"):
        return None
    return IPv6Interface(value)


def expiry_seconds(value: str, key: str = "ipv4.dhcp.expiry") -> int | None:
    """Lease time in seconds, None for ``infinite``."""
    return _expiry_seconds(key, value)


def dhcp_ranges(config: dict[str, str]) -> list[tuple[IPv4Address, IPv4Address]]:
    """Configured ranges, or LXD's default: the 2nd to the last-but-one host address."""
    gw = gateway(config)
    if gw is None:
        return []
    raw = setting(config, "ipv4.dhcp.ranges")
    if raw:
        return parse_ranges("ipv4.dhcp.ranges", raw, 4, gw.network)  # type: ignore[return-value]
    net = gw.network
    return [(net.network_address + 2, net.broadcast_address - 1)]


def dhcp6_ranges(config: dict[str, str]) -> list[tuple[IPv6Address, IPv6Address]]:
    """Stateful DHCPv6 ranges: configured, or LXD's default (the 2nd to the last address)."""
    gw = gateway6(config)
    if gw is None:
        return []
    raw = setting(config, "ipv6.dhcp.ranges")
    if raw:
        return parse_ranges("ipv6.dhcp.ranges", raw, 6, gw.network)  # type: ignore[return-value]
    net = gw.network
    return [(net.network_address + 2, net.broadcast_address)]


def validate(config: dict[str, str]) -> dict[str, str]:
    """Check every key; return the config with LXD's stored defaults filled in.

    An empty value means "unset" (LXD's ``validate.Optional``) and is dropped.
    """
    if not isinstance(config, dict):
        raise BadRequest("Network config must be a map of string keys to string values")
    out: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadRequest(f"Invalid config entry {key!r}: keys and values must be strings")
        if value == "" and not key.startswith("user."):
            continue
        check_key(key, value)
        out[key] = value
    if "ipv4.address" not in out:
        out["ipv4.address"] = "auto"
    if out["ipv4.address"] == "auto" and "ipv4.nat" not in out:
        out["ipv4.nat"] = "true"
    out.setdefault("ipv6.address", "none")
    if out["ipv6.address"] == "auto" and "ipv6.nat" not in out:
        out["ipv6.nat"] = "true"
    if gateway(out) is not None and "ipv4.dhcp.ranges" in out:
        dhcp_ranges(out)  # now that the subnet is known, ranges must fall inside it
    if gateway6(out) is not None and "ipv6.dhcp.ranges" in out:
        dhcp6_ranges(out)
    return out


def _check_free(key: str, net: AnyNetwork, used: list[AnyNetwork]) -> None:
    clash = overlapping(net, used)
    if clash is not None:
        raise Conflict(f"Subnet {net} of {key!r} overlaps {clash}, already used on this "
                       "host; pick another or use auto")


def resolve_auto(config: dict[str, str], taken: list[AnyNetwork],
                 own_ifname: str | None = None) -> dict[str, str]:
    """Replace ``auto`` addresses with free subnets; check explicit ones are free.

    ``taken`` are the subnets of Corral's other networks; ``own_ifname`` is this
    network's bridge, whose own addresses must not count as a collision on update.
    """
    out = dict(config)
    if out.get("ipv4.address") == "auto":
        net = pick_free_ipv4_subnet(taken, host_networks=host_ipv4_networks(own_ifname))
        out["ipv4.address"] = f"{net.network_address + 1}/{net.prefixlen}"
        dhcp_ranges(out)  # explicit ranges must fall inside the subnet just picked
    elif (gw := gateway(out)) is not None:
        _check_free("ipv4.address", gw.network, list(taken) + host_ipv4_networks(own_ifname))
    if out.get("ipv6.address") == "auto":
        _require_kernel_ipv6()
        net6 = pick_free_ula_subnet(taken, host_networks=host_ipv6_networks(own_ifname))
        out["ipv6.address"] = f"{net6.network_address + 1}/{net6.prefixlen}"
        dhcp6_ranges(out)
    elif (gw6 := gateway6(out)) is not None:
        _require_kernel_ipv6()
        _check_free("ipv6.address", gw6.network,
                    list(taken) + host_ipv6_networks(own_ifname))
    return out


def _require_kernel_ipv6() -> None:
    if not Path("/proc/sys/net/ipv6").exists():
        raise BadRequest("Cannot set 'ipv6.address': this kernel has no IPv6 support "
                         "(/proc/sys/net/ipv6 is missing); use ipv6.address=none")
