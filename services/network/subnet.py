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
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
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


def host_ipv4_networks(exclude_ifname: str | None = None) -> list[IPv4Network]:
    """Networks the host already uses: addresses, non-default routes, name servers.

    ``exclude_ifname`` leaves out one interface's addresses and routes, so a network that
    is being updated does not collide with itself.
    """
    used: list[IPv4Network] = []
    with IPRoute() as ipr:
        skip_index = None
        if exclude_ifname:
            found = ipr.link_lookup(ifname=exclude_ifname)
            skip_index = found[0] if found else None
        for addr in ipr.get_addr(family=socket.AF_INET):
            if addr["index"] == skip_index:
                continue
            ip = addr.get_attr("IFA_ADDRESS")
            used.append(ip_network(f"{ip}/{addr['prefixlen']}", strict=False))
        for route in ipr.get_routes(family=socket.AF_INET):
            if route["dst_len"] == 0 or route.get_attr("RTA_OIF") == skip_index:
                continue  # the default route covers everything; it does not "use" 10/8
            dst = route.get_attr("RTA_DST")
            if dst:
                used.append(ip_network(f"{dst}/{route['dst_len']}", strict=False))
    used.extend(_resolver_networks())
    return used


def _resolver_networks() -> list[IPv4Network]:
    """Name servers of the host, as /32s (a missing or odd resolv.conf is not an error)."""
    try:
        text = RESOLV_CONF.read_text()
    except OSError:
        return []
    found = []
    for m in re.finditer(r"^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$", text, re.M):
        try:
            found.append(IPv4Network(f"{IPv4Address(m.group(1))}/32"))
        except ValueError:
            continue
    return found


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
    used: list[IPv6Network] = []
    with IPRoute() as ipr:
        skip_index = None
        if exclude_ifname:
            found = ipr.link_lookup(ifname=exclude_ifname)
            skip_index = found[0] if found else None
        for addr in ipr.get_addr(family=socket.AF_INET6):
            if addr["index"] == skip_index:
                continue
            ip = addr.get_attr("IFA_ADDRESS")
            used.append(ip_network(f"{ip}/{addr['prefixlen']}", strict=False))
        for route in ipr.get_routes(family=socket.AF_INET6):
            if route["dst_len"] == 0 or route.get_attr("RTA_OIF") == skip_index:
                continue
            dst = route.get_attr("RTA_DST")
            if dst:
                net = ip_network(f"{dst}/{route['dst_len']}", strict=False)
                if not (net.is_multicast or net.is_link_local):
                    used.append(net)
    return [n for n in used if not n.is_link_local and not n.is_loopback] + \
        _resolver_networks6()


def _resolver_networks6() -> list[IPv6Network]:
    try:
        text = RESOLV_CONF.read_text()
    except OSError:
        return []
    found = []
    for m in re.finditer(r"^\s*nameserver\s+([0-9a-fA-F:]+)(%\S+)?\s*$", text, re.M):
        try:
            found.append(IPv6Network(f"{IPv6Address(m.group(1))}/128"))
        except ValueError:
            continue
    return found


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
