"""The host side of a routed NIC that LXC does not do itself.

LXC's ``veth.mode = router`` (what the instance driver renders for a routed NIC) adds the
host routes to the instance's addresses through its veth and answers ARP/NDP for the
link-local gateway on the veth. What is left is the host: it must forward, and when the
NIC names a ``parent`` (the host's uplink), it answers ARP/NDP on that parent for the
instance's addresses (proxy neighbours), so machines on the parent's segment reach the
instance as if it sat there, as LXD's routed NIC.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shared.errors import NotFound
from shared.messages.network import Nic

from .drivers import sysctl

NTF_PROXY = 0x08


def prepare(nic: Nic) -> None:
    """Forwarding on; proxy ARP/NDP entries on the parent for each address (idempotent)."""
    if nic.ipv4_addresses:
        sysctl.enable_ipv4_forwarding()
    if nic.ipv6_addresses:
        sysctl.enable_ipv6_forwarding()
    if not nic.parent:
        return
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=nic.parent)
        if not found:
            raise NotFound(f"NIC parent {nic.parent!r} does not exist on this host")
        for family, addrs in ((socket.AF_INET, nic.ipv4_addresses),
                              (socket.AF_INET6, nic.ipv6_addresses)):
            if addrs:
                proto = "ipv4" if family == socket.AF_INET else "ipv6"
                key = "proxy_arp" if family == socket.AF_INET else "proxy_ndp"
                sysctl.set_interface(proto, nic.parent, key, "1", required=True)
            for addr in addrs:
                try:
                    ipr.neigh("replace", dst=addr.split("/")[0], ifindex=found[0],
                              family=family, flags=NTF_PROXY)
                except NetlinkError as err:
                    if err.code != 17:  # EEXIST
                        raise


def release(nic: Nic) -> None:
    """Remove the proxy entries ``prepare`` made on the parent (the instance went)."""
    if not nic.parent:
        return
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=nic.parent)
        if not found:
            return
        for family, addrs in ((socket.AF_INET, nic.ipv4_addresses),
                              (socket.AF_INET6, nic.ipv6_addresses)):
            for addr in addrs:
                try:
                    ipr.neigh("del", dst=addr.split("/")[0], ifindex=found[0],
                              family=family, flags=NTF_PROXY)
                except NetlinkError:
                    pass
