"""The few kernel knobs a bridge needs: per-interface IPv6 settings and forwarding.

Forwarding is host-wide, so it is only ever turned on (as LXD does), never back off: other
networks, or the administrator, may rely on it. Turning IPv6 forwarding on makes the
kernel ignore router advertisements on interfaces with ``accept_ra=1``, which would drop
a host's RA-learnt default route; LXD first moves every such interface to ``accept_ra=2``
(accept RAs even when forwarding), and so do we, then checks the default routes survived.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pyroute2 import IPRoute

from shared.errors import BadRequest, Internal
from shared.log import get_logger

PROC_NET = Path("/proc/sys/net")
log = get_logger(component="network")


def set_interface(family: str, ifname: str, key: str, value: str, required: bool) -> None:
    """``/proc/sys/net/<family>/conf/<ifname>/<key>``; missing: 400 if ``required``."""
    path = PROC_NET / family / "conf" / ifname / key
    if not path.exists():
        if required:
            raise BadRequest(f"Cannot configure {family} on {ifname!r}: {path} is missing "
                             "(no kernel IPv6 support?); use ipv6.address=none")
        return
    if path.read_text().strip() != value:
        path.write_text(value)


def enable_ipv4_forwarding() -> None:
    path = PROC_NET / "ipv4" / "ip_forward"
    if path.read_text().strip() != "1":
        path.write_text("1")


def _default_routes6() -> set[tuple]:
    with IPRoute() as ipr:
        return {(r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"))
                for r in ipr.get_routes(family=socket.AF_INET6)
                if r["dst_len"] == 0 and r.get_attr("RTA_TABLE") == 254}


def enable_ipv6_forwarding(conf: Path | None = None) -> None:
    """``forwarding=1`` everywhere, after moving ``accept_ra=1`` interfaces to 2."""
    conf = conf or PROC_NET / "ipv6" / "conf"
    if (conf / "all" / "forwarding").read_text().strip() == "1":
        return
    before = _default_routes6()
    entries = sorted(p for p in conf.iterdir() if p.is_dir())
    for entry in entries:
        try:
            if (entry / "accept_ra").read_text().strip() == "1":
                (entry / "accept_ra").write_text("2")
        except FileNotFoundError:
            continue  # an interface that went away meanwhile
    for entry in entries:
        try:
            (entry / "forwarding").write_text("1")
        except FileNotFoundError:
            continue
    lost = before - _default_routes6()
    if lost:  # should not happen with accept_ra=2; say so loudly rather than silently
        log.error("IPv6 default routes disappeared after enabling forwarding",
                  routes=sorted(map(str, lost)))
        raise Internal("Enabling IPv6 forwarding removed the host's default IPv6 route(s) "
                       f"{sorted(map(str, lost))}; set ipv6.routing=false on this network")
