"""The overlay of a cluster: one bridge network, one L2 segment across the members.

In a cluster (``CORRAL_CLUSTER=1``) every member's bridge of a network gets a VXLAN port
(``cvx<hash>``, VNI from the network's name) whose flood list names every other member's
cluster address (head-end replication: ``bridge fdb append 00:00:00:00:00:00 ... dst``),
so a container on node1 reaches one on node2 through the members' cluster links. It is
automatic, not LXD's ``tunnel.<name>.*`` keys: a cluster already knows its members and
their addresses (the ``members`` bucket), and a key per pair of members would have to be
kept in step by hand as members join.

Each member keeps its own gateway (the network's ``ipv4.address``, the same on every
member) and its own dnsmasq serving its own slice of the DHCP range (network_members).
So that a guest only ever talks to its own member's gateway and DHCP server, a bridge-
family nft table drops at the tunnel port: DHCP/DHCPv6 and router adverts, ARP about the
gateway address, and any ARP the member itself sends (its gateway address is everyone's).
Guest-to-guest traffic, ARP included, crosses freely.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
from urllib.parse import urlsplit

from shared.log import get_logger

log = get_logger(component="network")
PORT = 4789  # IANA VXLAN
# Seconds between two looks at the members (networks.follow_peers): a member that joins
# or is removed is in every bridge's flood list within about this long.
FOLLOW_EVERY = 2.0
ZERO = "00:00:00:00:00:00"


def device(network: str) -> str:
    return "cvx" + hashlib.sha256(network.encode()).hexdigest()[:8]


def vni(network: str) -> int:
    return int(hashlib.sha256(f"vni-{network}".encode()).hexdigest()[:6], 16) or 1


def table(network: str) -> str:
    return "corral_ovl_" + hashlib.sha256(network.encode()).hexdigest()[:8]


def local_address() -> str | None:
    """This member's cluster address (``CORRAL_CLUSTER_ADDRESS``, host[:port])."""
    raw = os.environ.get("CORRAL_CLUSTER_ADDRESS", "")
    host = urlsplit(f"//{raw}").hostname if raw else None
    return host if host and _is_ip(host) else None


def peer_address(url: str) -> str | None:
    host = urlsplit(url).hostname
    return host if host and _is_ip(host) else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _run(*args: str, check: bool = True, stdin: str | None = None) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True, input=stdin)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def attach(network: str, bridge: str, local: str, peers: list[str],
           gateway: str | None) -> None:
    """Make (or bring in step) the VXLAN port of ``bridge`` and its filter table."""
    dev = device(network)
    if _run("ip", "link", "show", dev, check=False) == "":
        _run("ip", "link", "add", dev, "type", "vxlan", "id", str(vni(network)), "local",
             local, "dstport", str(PORT))
        # Keep the bridge at 1500: the outer packets are fragmented on the cluster link
        # rather than every guest's MTU lowered by the 50 bytes of the encapsulation.
        _run("ip", "link", "set", dev, "mtu", "1500")
    _run("ip", "link", "set", dev, "master", bridge, "up")
    have = set()
    for line in _run("bridge", "fdb", "show", "dev", dev).splitlines():
        parts = line.split()
        if parts and parts[0] == ZERO and "dst" in parts:
            have.add(parts[parts.index("dst") + 1])
    for gone in have - set(peers):
        _run("bridge", "fdb", "del", ZERO, "dev", dev, "dst", gone, check=False)
    for peer in sorted(set(peers) - have):
        _run("bridge", "fdb", "append", ZERO, "dev", dev, "dst", peer)
    _run("nft", "-f", "-", stdin=_ruleset(network, dev, gateway))
    log.info("overlay attached", network=network, device=dev, peers=len(peers))


def detach(network: str) -> None:
    _run("ip", "link", "del", device(network), check=False)
    _run("nft", "delete", "table", "bridge", table(network), check=False)


def _ruleset(network: str, dev: str, gateway: str | None) -> str:
    t = table(network)
    gw = f'        oifname "{dev}" ether type arp arp daddr ip {gateway} drop\n' \
        if gateway else ""
    gw_in = f'        iifname "{dev}" ether type arp arp daddr ip {gateway} drop\n' \
        if gateway else ""
    own = (f'        oifname "{dev}" udp dport {{ 67, 68, 546, 547 }} drop\n'
           f'        oifname "{dev}" icmpv6 type {{ nd-router-advert, nd-router-solicit }} drop\n')
    return (f"table bridge {t}\ndelete table bridge {t}\ntable bridge {t} {{\n"
            "    chain forward {\n        type filter hook forward priority 0;\n"
            f"{own}{gw}    }}\n"
            "    chain input {\n        type filter hook input priority 0;\n"
            f'        iifname "{dev}" udp dport {{ 67, 68, 546, 547 }} drop\n'
            f'        iifname "{dev}" icmpv6 type {{ nd-router-advert, nd-router-solicit }} drop\n'
            f"{gw_in}    }}\n"
            "    chain output {\n        type filter hook output priority 0;\n"
            f'        oifname "{dev}" ether type arp drop\n{own}    }}\n}}\n')
