"""One nftables table per managed bridge: accept its traffic, masquerade its subnet.

A table of its own (``inet corral-<name>``) makes delete a single atomic ``delete table``
and never touches rules someone else wrote. Rules are loaded with ``nft -f -`` as one
transaction, so a half-applied ruleset cannot exist.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network

from shared.errors import Internal

NFT = "/usr/sbin/nft"


def table_name(network: str) -> str:
    return f"corral-{network}"


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError as e:
        raise Internal(f"{NFT} is missing: install the Debian package nftables") from e


def ruleset(network: str, bridge: str, subnet: IPv4Network, nat: bool) -> str:
    """The table text; first lines make loading it replace any previous version."""
    t = table_name(network)
    masq = (f'    ip saddr {subnet} oifname != "{bridge}" masquerade\n' if nat else "")
    return (
        f"table inet {t} {{}}\n"
        f"delete table inet {t}\n"
        f"table inet {t} {{\n"
        f"  chain forward_accept {{\n"
        f"    type filter hook forward priority 0; policy accept;\n"
        f'    iifname "{bridge}" accept\n'
        f'    oifname "{bridge}" accept\n'
        f"  }}\n"
        f"  chain input_accept {{\n"
        f"    type filter hook input priority 0; policy accept;\n"
        f'    iifname "{bridge}" udp dport {{ 53, 67 }} accept\n'
        f'    iifname "{bridge}" tcp dport 53 accept\n'
        f"  }}\n"
        f"  chain postrouting_nat {{\n"
        f"    type nat hook postrouting priority 100; policy accept;\n"
        f"{masq}"
        f"  }}\n"
        f"}}\n"
    )


def apply_table(network: str, bridge: str, subnet: IPv4Network, nat: bool) -> None:
    """Create or atomically replace the network's table."""
    res = _run(["-f", "-"], ruleset(network, bridge, subnet, nat))
    if res.returncode != 0:
        raise Internal(f"Failed to load nftables rules for network {network!r}: "
                       f"{res.stderr.strip()}")


def table_exists(network: str) -> bool:
    return _run(["list", "table", "inet", table_name(network)]).returncode == 0


def delete_table(network: str) -> None:
    """Remove the table; a missing table is fine (delete is idempotent)."""
    if not table_exists(network):
        return
    res = _run(["delete", "table", "inet", table_name(network)])
    if res.returncode != 0 and table_exists(network):
        raise Internal(f"Failed to delete nftables table {table_name(network)}: "
                       f"{res.stderr.strip()}")
