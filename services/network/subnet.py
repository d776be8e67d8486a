"""Choosing a free subnet (IPv4 /24, IPv6 ULA /64) for a new network, from local facts only.

LXD finds a free subnet by pinging random 10.x.y.1 addresses and connecting to their port
22. On Corral's machines that traffic is forbidden, and the outer network answers anyway so
every subnet would look taken. So we decide from what the host already knows: its own
addresses, its routes (every table), the name servers in /etc/resolv.conf (routing one of
them onto a bridge would break the host's DNS) and the subnets Corral already manages.
"""

from __future__ import annotations

import random
import re
import socket
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Iterable, Protocol, TypeVar, Union

from pyroute2 import IPRoute

from shared.errors import Conflict

RANDOM_ATTEMPTS = 1000
RESOLV_CONF = Path("/etc/resolv.conf")
AnyNetwork = Union[IPv4Network, IPv6Network]
Net = TypeVar("Net", IPv4Network, IPv6Network)


class RandomSource(Protocol):
    """What we need from an RNG: ``random.Random`` fits, tests inject a scripted one."""

    def randrange(self, stop: int) -> int: ...


def _host_networks(family: int, exclude_ifname: str | None) -> list[AnyNetwork]:
    """The networks of the host's addresses and non-default routes in one address family;
    ``exclude_ifname``'s own are left out (a network being updated does not collide with
    itself)."""
    used: list[AnyNetwork] = []
    with IPRoute() as ipr:
        skip_index = None
        if exclude_ifname:
            found = ipr.link_lookup(ifname=exclude_ifname)
            skip_index = found[0] if found else None
        for addr in ipr.get_addr(family=family):
            if addr["index"] == skip_index:
                continue
            ip = addr.get_attr("IFA_ADDRESS")
            used.append(ip_network(f"{ip}/{addr['prefixlen']}", strict=False))
        for route in ipr.get_routes(family=family):
            if route["dst_len"] == 0 or route.get_attr("RTA_OIF") == skip_index:
                continue  # the default route covers everything; it does not "use" 10/8
            dst = route.get_attr("RTA_DST")
            if dst:
                used.append(ip_network(f"{dst}/{route['dst_len']}", strict=False))
    return used


def _resolver_networks(version: int) -> list[AnyNetwork]:
    """Name servers of the host, as /32s or /128s (a missing or odd resolv.conf is not an
    error; an IPv6 one may carry a %zone)."""
    try:
        text = RESOLV_CONF.read_text()
    except OSError:
        return []
    found: list[AnyNetwork] = []
    for m in re.finditer(r"^\s*nameserver\s+([0-9a-fA-F:.]+)(%\S+)?\s*$", text, re.M):
        try:
            ip = ip_address(m.group(1))
        except ValueError:
            continue
        if ip.version == version:
            found.append(ip_network(ip))
    return found


def host_ipv4_networks(exclude_ifname: str | None = None) -> list[IPv4Network]:
    """Networks the host already uses: addresses, non-default routes, name servers."""
    return [*_host_networks(socket.AF_INET, exclude_ifname), *_resolver_networks(4)]


def overlapping(candidate: Net, used: Iterable[AnyNetwork]) -> Net | None:
    """The first network in ``used`` of the same family that overlaps ``candidate``."""
    for net in used:
        if net.version == candidate.version and candidate.overlaps(net):  # type: ignore[arg-type]
            return net  # type: ignore[return-value]
    return None


def pick_free_ipv4_subnet(
    taken: list[IPv4Network],
    rng: RandomSource | None = None,
    host_networks: list[IPv4Network] | None = None,
) -> IPv4Network:
    """A random free 10.x.y.0/24 that overlaps neither the host nor ``taken``.

    Random like LXD so two hosts rarely pick the same one; after ``RANDOM_ATTEMPTS``
    misses it scans all 65536 candidates in order, so it only fails when 10/8 is full.
    ``host_networks`` overrides reading the host (None: read it with pyroute2).
    """
    rng = rng or random.SystemRandom()
    used = list(taken) + (host_ipv4_networks() if host_networks is None else host_networks)

    def candidate(n: int) -> IPv4Network:
        return IPv4Network(f"10.{n >> 8}.{n & 0xFF}.0/24")

    for _ in range(RANDOM_ATTEMPTS):
        net = candidate(rng.randrange(65536))
        if overlapping(net, used) is None:
            return net
    for n in range(65536):
        net = candidate(n)
        if overlapping(net, used) is None:
            return net
    raise Conflict("No free IPv4 /24 left in 10.0.0.0/8 on this host; "
                   "set ipv4.address to an explicit CIDR such as 172.30.0.1/24")


def host_ipv6_networks(exclude_ifname: str | None = None) -> list[IPv6Network]:
    """IPv6 networks the host uses: addresses, routes (not the default, not multicast or
    link-local ones, which every interface has) and name servers."""
    used = _host_networks(socket.AF_INET6, exclude_ifname)
    return [n for n in used if not (n.is_multicast or n.is_link_local or n.is_loopback)] + \
        _resolver_networks(6)


ULA_PREFIX = 0xFD << 120  # fd00::/8: locally assigned unique local addresses (RFC 4193)


def pick_free_ula_subnet(
    taken: Iterable[AnyNetwork],
    rng: RandomSource | None = None,
    host_networks: list[IPv6Network] | None = None,
) -> IPv6Network:
    """A ``fdXX:XXXX:XXXX::/64`` with a random 40-bit global ID (RFC 4193, as LXD does),
    overlapping neither the host nor ``taken``. 2^40 candidates: a miss is rare, and
    after ``RANDOM_ATTEMPTS`` misses something is wrong (a route covering fd00::/8)."""
    rng = rng or random.SystemRandom()
    used = list(taken) + (host_ipv6_networks() if host_networks is None else host_networks)
    for _ in range(RANDOM_ATTEMPTS):
        global_id = rng.randrange(2**40)
        net = IPv6Network((ULA_PREFIX | global_id << 80, 64))
        if overlapping(net, used) is None:
            return net
    raise Conflict("No free IPv6 ULA /64 found in fd00::/8 on this host (a route or "
                   "address covers it); set ipv6.address to an explicit CIDR such as "
                   "fd42:1:2:3::1/64")
