"""What a bridge connects beyond its own address: extra routes and external interfaces.

``ipv4.routes``/``ipv6.routes`` are subnets routed into the bridge (for instances that
route further subnets themselves); they are tagged ``proto static`` like LXD's, so a sync
removes exactly the routes this key made. ``bridge.external_interfaces`` enslaves existing
host interfaces to the bridge, as LXD does, only when they carry no global address (an
address would stop working, and with it whatever used that interface).
"""

from __future__ import annotations

import socket
from ipaddress import ip_network

from pyroute2 import IPRoute

from shared.errors import Conflict
from shared.log import get_logger

from . import bridge_config as bc

RTPROT_STATIC = 4
MAIN_TABLE = 254
SCOPE_GLOBAL = 0
log = get_logger(component="network")


def _listed(config: dict[str, str], key: str) -> list[str]:
    return [p.strip() for p in config.get(key, "").split(",") if p.strip()]


def sync_routes(ipr: IPRoute, idx: int, config: dict[str, str]) -> None:
    """Leave exactly the configured extra routes on the bridge (per family with an
    address, as LXD adds them only then)."""
    for family, version, gw in ((socket.AF_INET, 4, bc.gateway(config)),
                                (socket.AF_INET6, 6, bc.gateway6(config))):
        want = {ip_network(n) for n in _listed(config, f"ipv{version}.routes")} if gw else set()
        have = set()
        for route in ipr.get_routes(family=family, table=MAIN_TABLE):
            dst = route.get_attr("RTA_DST")
            if (route.get_attr("RTA_OIF") == idx and route["proto"] == RTPROT_STATIC
                    and dst and route["dst_len"]):
                have.add(ip_network(f"{dst}/{route['dst_len']}", strict=False))
        for net in have - want:
            ipr.route("del", dst=str(net), oif=idx, proto=RTPROT_STATIC, family=family)
        for net in sorted(want - have, key=str):
            ipr.route("add", dst=str(net), oif=idx, proto=RTPROT_STATIC, family=family)


def external_interfaces(config: dict[str, str]) -> list[str]:
    return _listed(config, "bridge.external_interfaces")


def attach_external(ipr: IPRoute, idx: int, bridge: str, names: list[str]) -> None:
    """Enslave each listed interface; a missing one is skipped (it may appear later and
    the next start attaches it), one with a global address is refused."""
    for name in names:
        found = ipr.link_lookup(ifname=name)
        if not found:
            log.warning("external interface missing, not attached", network=bridge,
                        interface=name)
            continue
        link = ipr.get_links(found[0])[0]
        if link.get_attr("IFLA_MASTER") == idx:
            continue
        if any(a["scope"] == SCOPE_GLOBAL for a in ipr.get_addr(index=found[0])):
            raise Conflict(f"Cannot attach external interface {name!r} to bridge {bridge!r}: "
                           "it has a global address (only unconfigured interfaces can be "
                           "bridged)")
        ipr.link("set", index=found[0], master=idx, state="up")


def detach_external(ipr: IPRoute, idx: int, names: list[str]) -> None:
    """Free interfaces that are no longer listed (only if they are still our ports)."""
    for name in names:
        found = ipr.link_lookup(ifname=name)
        if found and ipr.get_links(found[0])[0].get_attr("IFLA_MASTER") == idx:
            ipr.link("set", index=found[0], master=0)
