"""The host's own interfaces, read with pyroute2: what LXD lists as unmanaged networks.

``GET /1.0/networks`` shows every interface of the host, not only Corral's bridges, and
``/state`` works for any of them; both come from netlink here (no ``ip`` subprocess).
Host-side veth ends are skipped like LXD does: there is one per running NIC.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from shared.errors import NotFound

IFF_UP, IFF_BROADCAST, IFF_LOOPBACK, IFF_POINTOPOINT = 0x1, 0x2, 0x8, 0x10
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host"}
SYS_NET = Path("/sys/class/net")


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def _lxd_type(name: str, flags: int, kind: str | None) -> str:
    """LXD's type of an unmanaged interface: loopback, bridge, vlan, bond, physical..."""
    if flags & IFF_LOOPBACK:
        return "loopback"
    if kind in ("bridge", "vlan", "bond"):
        return kind
    if (SYS_NET / name / "device").exists():
        return "physical"
    return "unknown"


def interfaces() -> dict[str, str]:
    """Host interface name -> LXD type, without host-side veth ends."""
    out: dict[str, str] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if not name or name.startswith("veth"):
                continue
            out[name] = _lxd_type(name, link["flags"], _kind(link))
    return dict(sorted(out.items()))


def interface_type(name: str) -> str | None:
    """The LXD type of one host interface, None when it does not exist."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
    return _lxd_type(name, link["flags"], _kind(link))


def interface_state(name: str) -> dict[str, Any]:
    """LXD's ``/1.0/networks/<name>/state`` for any host interface (404 if absent)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NotFound(f"Interface {name!r} does not exist on this host")
        link = ipr.get_links(found[0])[0]
        addrs = ipr.get_addr(index=found[0])
    flags = link["flags"]
    stats = link.get_attr("IFLA_STATS64") or {}
    kind = ("loopback" if flags & IFF_LOOPBACK else "point-to-point"
            if flags & IFF_POINTOPOINT else "broadcast" if flags & IFF_BROADCAST
            else "unknown")
    return {
        "addresses": [{
            "family": "inet" if a["family"] == socket.AF_INET else "inet6",
            "address": a.get_attr("IFA_ADDRESS"),
            "netmask": str(a["prefixlen"]),
            "scope": _SCOPES.get(a["scope"], "global"),
        } for a in addrs],
        "counters": {
            "bytes_received": stats.get("rx_bytes", 0),
            "bytes_sent": stats.get("tx_bytes", 0),
            "packets_received": stats.get("rx_packets", 0),
            "packets_sent": stats.get("tx_packets", 0),
        },
        "hwaddr": link.get_attr("IFLA_ADDRESS"),
        "mtu": link.get_attr("IFLA_MTU"),
        "state": "up" if flags & IFF_UP else "down",
        "type": kind,
        "bond": None,
        "bridge": bridge_info(name) if _kind(link) == "bridge" else None,
        "vlan": None,
        "ovn": None,
    }


def bridge_info(name: str) -> dict[str, Any]:
    """The ``bridge`` part of a state, from sysfs."""
    sysfs = SYS_NET / name

    def read(attr: str, default: str = "0") -> str:
        try:
            return (sysfs / "bridge" / attr).read_text().strip()
        except OSError:
            return default

    try:
        ports = sorted(p.name for p in (sysfs / "brif").iterdir())
    except OSError:
        ports = []
    return {
        "id": read("bridge_id", ""),
        "stp": read("stp_state") != "0",
        "forward_delay": int(read("forward_delay")),
        "vlan_default": int(read("default_pvid")),
        "vlan_filtering": read("vlan_filtering") != "0",
        "upper_devices": ports,
    }
