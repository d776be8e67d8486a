"""The host side of a routed NIC that LXC does not do itself.

LXC's ``veth.mode = router`` (what the instance driver renders for a routed NIC) adds the
host routes to the instance's addresses through its veth and answers ARP/NDP for the
link-local gateway on the veth. What is left is the host: it must forward, and when the
NIC names a ``parent`` (the host's uplink), it answers ARP/NDP on that parent for the
instance's addresses (proxy neighbours), so machines on the parent's segment reach the
instance as if it sat there, as LXD's routed NIC.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shared.errors import NotFound
from shared.messages.network import Nic

from .drivers import sysctl

NTF_PROXY = 0x08


def _record(corral_dir: Path, hwaddr: str) -> Path:
    """Which proxy entries a routed NIC made on its parent, so they go with the instance
    (``release``) even though no managed network remembers the NIC."""
    return corral_dir / "networks" / ".routed" / hwaddr.lower().replace(":", "-")


def prepare(nic: Nic, corral_dir: Path | None = None) -> None:
    """Forwarding on; proxy ARP/NDP entries on the parent for each address (idempotent)."""
    if corral_dir is not None and nic.parent:
        path = _record(corral_dir, nic.hwaddr)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nic.model_dump_json())
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


def release_recorded(corral_dir: Path, hwaddrs: set[str]) -> int:
    """Remove the proxy entries of these MACs' routed NICs (a deleted instance's)."""
    n = 0
    for mac in hwaddrs:
        path = _record(corral_dir, mac)
        try:
            nic = Nic.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        release(nic)
        path.unlink(missing_ok=True)
        n += 1
    return n
