"""Is an address on a bridge in use right now? Ask the kernel's neighbour table.

A DHCP lease says who was given an address, not whether that guest still uses it: a
stopped instance keeps its lease until it expires. Before a lease decides anything that
would put two guests on one address, we look: the host's neighbour entry for the address
is dropped (a cached one may be a guest that just went), a datagram is sent so the
kernel resolves it afresh (ARP for IPv4, neighbour solicitation for IPv6), and the answer
says whether someone holds it (and with which MAC). Only the bridge's own subnet is
reached; nothing leaves the host.
"""

from __future__ import annotations

import socket
import time
from ipaddress import ip_address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NUD_REACHABLE = 0x02
DISCARD_PORT = 9  # the datagram itself is never read: only the resolution matters


def answering_mac(bridge: str, address: str, timeout: float = 0.5) -> str | None:
    """The MAC that answers for ``address`` on ``bridge`` within ``timeout`` s; None when
    nobody does (a live guest on a local bridge answers in a few ms)."""
    family = socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return None
        idx = found[0]
        try:
            ipr.neigh("del", dst=address, ifindex=idx, family=family)
        except NetlinkError:
            pass  # no entry yet
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(b"", (address, DISCARD_PORT))
            except OSError:
                return None  # no route to it: not on this bridge
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in ipr.get_neighbours(dst=address, ifindex=idx, family=family):
                if entry["state"] & NUD_REACHABLE:
                    return str(entry.get_attr("NDA_LLADDR") or "").lower() or None
            time.sleep(0.005)
    return None
