"""``proxy`` devices with ``nat=true``: DNAT rules in nftables instead of a forwarder.

Why a table per device (``inet cp_<hash>``): adding and removing is then one atomic
``nft -f`` and one ``delete table``, with no rule handles to find again after a restart;
the kernel keeps the rules while the instance service restarts. As LXD, NAT mode needs
addresses the kernel can route: the connect address must be a static ``ipv4.address`` /
``ipv6.address`` of one of the instance's NICs (the one address DHCP will keep giving it),
and the listen address must not be loopback (packets from 127.0.0.0/8 are never routed
out to a bridge). The rules catch both packets from elsewhere (prerouting) and from the
host itself (output).
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from collections.abc import Mapping

from shared.errors import BadRequest, Internal

from .proxy_rules import Address, parse_address

NFT = "/usr/sbin/nft"


def table(host: str, device: str) -> str:
    return "cp_" + hashlib.sha256(f"{host}/{device}".encode()).hexdigest()[:12]


def static_addresses(devices: Mapping[str, Mapping[str, str]]) -> set[str]:
    """The instance's static NIC addresses (bridged NICs on a managed network)."""
    out = set()
    for dev in devices.values():
        if dev.get("type") == "nic":
            for key in ("ipv4.address", "ipv6.address"):
                for a in (dev.get(key) or "").split(","):
                    if a.strip():
                        out.add(str(ipaddress.ip_address(a.strip())))
    return out


def check(name: str, dev: Mapping[str, str],
          devices: Mapping[str, Mapping[str, str]]) -> tuple[Address, Address]:
    """(listen, connect) of a nat=true proxy the kernel can route; 400 with why not."""
    listen = parse_address(name, "listen", dev["listen"])
    connect = parse_address(name, "connect", dev["connect"])
    lip, cip = ipaddress.ip_address(listen.host), ipaddress.ip_address(connect.host)
    if lip.is_loopback:
        raise BadRequest(f"Device {name!r}: nat=true cannot listen on a loopback address "
                         f"({listen.host}): the kernel does not route such packets to an "
                         "instance; listen on a host address or use nat=false")
    if lip.version != cip.version:
        raise BadRequest(f"Device {name!r}: nat=true needs listen and connect addresses "
                         "of the same IP version")
    statics = static_addresses(devices)
    if str(cip) not in statics:
        raise BadRequest(f"Device {name!r}: with nat=true the connect address must be a "
                         "static ipv4.address/ipv6.address of one of the instance's NICs "
                         f"({', '.join(sorted(statics)) or 'it has none'}), not "
                         f"{connect.host}")
    return listen, connect


def _nft(script: str) -> None:
    res = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise Internal(f"nft refused the proxy rules: {res.stderr.strip()}")


def apply(host: str, device: str, listen: Address, connect: Address) -> None:
    """Install (or replace) the device's DNAT rules, atomically."""
    t = table(host, device)
    fam = "ip6" if ":" in listen.host else "ip"
    lip = ipaddress.ip_address(listen.host)
    match = "fib daddr type local" if lip.is_unspecified else f"{fam} daddr {listen.host}"
    to = f"[{connect.host}]:{connect.port}" if fam == "ip6" else \
        f"{connect.host}:{connect.port}"
    rule = f"{match} {listen.proto} dport {listen.port} dnat {fam} to {to}"
    remove(host, device)
    _nft(f"""table inet {t} {{
  chain pre {{ type nat hook prerouting priority dstnat; {rule}; }}
  chain out {{ type nat hook output priority -100; {rule}; }}
}}
""")


def remove(host: str, device: str) -> None:
    subprocess.run([NFT, "delete", "table", "inet", table(host, device)],
                   capture_output=True, timeout=30)


def present(host: str, device: str) -> bool:
    return subprocess.run([NFT, "list", "table", "inet", table(host, device)],
                          capture_output=True, timeout=30).returncode == 0
