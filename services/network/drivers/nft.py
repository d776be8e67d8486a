"""One nftables table per managed bridge: accept its traffic, masquerade its subnets (v4, v6).

A table of its own (``inet corral-<name>``) makes delete a single atomic ``delete table``
and never touches rules someone else wrote. Rules are loaded with ``nft -f -`` as one
transaction, so a half-applied ruleset cannot exist.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

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


@dataclass(frozen=True)
class Family:
    """One address family's part of a bridge's rules (from its ``ipv4.*``/``ipv6.*`` keys).

    ``firewall`` (LXD's ``ipvN.firewall``): add the accept rules for DHCP, DNS and (v6)
    router/neighbour discovery, and the forwarding policy; ``routing``: forward to and
    from the bridge (else drop it); ``nat``: masquerade (or SNAT to ``nat_address``) what
    leaves the subnet through another interface, in a chain that runs just before
    (``nat_order=before``) or just after the usual source-NAT priority.
    """

    version: int
    subnet: IPv4Network | IPv6Network
    nat: bool = False
    nat_address: str = ""
    nat_order: str = "before"
    firewall: bool = True
    routing: bool = True


def ruleset(network: str, bridge: str, families: list[Family]) -> str:
    """The table text; first lines make loading it replace any previous version."""
    t = table_name(network)
    forward, inputs, nat_chains = [], [], []
    for fam in families:
        proto = "ipv4" if fam.version == 4 else "ipv6"
        ipv = "ip" if fam.version == 4 else "ip6"
        if fam.firewall:
            if fam.routing:
                forward += [f'    meta nfproto {proto} iifname "{bridge}" accept',
                            f'    meta nfproto {proto} oifname "{bridge}" accept']
            else:  # no routing: nothing crosses between the bridge and another interface
                forward += [f'    meta nfproto {proto} iifname "{bridge}" '
                            f'oifname != "{bridge}" drop',
                            f'    meta nfproto {proto} oifname "{bridge}" '
                            f'iifname != "{bridge}" drop']
            dhcp = 67 if fam.version == 4 else 547
            on = f'    iifname "{bridge}" meta nfproto {proto}'
            inputs += [f"{on} udp dport {{ 53, {dhcp} }} accept", f"{on} tcp dport 53 accept"]
            if fam.version == 6:
                inputs.append(f'    iifname "{bridge}" icmpv6 type {{ nd-router-solicit, '
                              'nd-neighbor-solicit, nd-neighbor-advert } accept')
        if fam.nat:
            action = (f"snat {ipv} to {fam.nat_address}" if fam.nat_address else "masquerade")
            priority = 99 if fam.nat_order == "before" else 101
            nat_chains.append(
                f"  chain postrouting_nat{fam.version} {{\n"
                f"    type nat hook postrouting priority {priority}; policy accept;\n"
                f'    {ipv} saddr {fam.subnet} oifname != "{bridge}" {action}\n'
                f"  }}\n")
    body = "".join(line + "\n" for line in forward)
    ins = "".join(line + "\n" for line in inputs)
    return (
        f"table inet {t} {{}}\n"
        f"delete table inet {t}\n"
        f"table inet {t} {{\n"
        f"  chain forward_accept {{\n"
        f"    type filter hook forward priority 0; policy accept;\n"
        f"{body}"
        f"  }}\n"
        f"  chain input_accept {{\n"
        f"    type filter hook input priority 0; policy accept;\n"
        f"{ins}"
        f"  }}\n"
        f"{''.join(nat_chains)}"
        f"}}\n"
    )


def apply_table(network: str, bridge: str, families: list[Family]) -> None:
    """Create or atomically replace the network's table."""
    res = _run(["-f", "-"], ruleset(network, bridge, families))
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


# -- network ACLs: a table of their own per bridge -------------------------------------------

def acl_table_name(network: str) -> str:
    return f"corral-acl-{network}"


@dataclass(frozen=True)
class NicAcl:
    """One NIC's own ACL chains: what it sends is known by its MAC, what reaches it by
    its (static) addresses."""

    hwaddr: str
    addresses: tuple[str, ...]
    ingress: tuple[str, ...]
    egress: tuple[str, ...]


def acl_ruleset(network: str, bridge: str, ingress: list[str] | None,
                egress: list[str] | None, nics: list[NicAcl] | None = None) -> str:
    """The ACL table of a bridge: ``egress`` statements for what comes from the bridge
    (into the host or forwarded), ``ingress`` for what goes to it (from the host or
    forwarded). Established flows and the host's DHCP/DNS/NDP service always pass.
    Priority 1: after the bridge table's own accept rules, which cannot override a drop
    here (every base chain at a hook gets its say)."""
    t = acl_table_name(network)
    br = f'"{bridge}"'

    def chain(name: str, stmts: list[str]) -> str:
        return f"  chain {name} {{\n" + "".join(f"    {s}\n" for s in stmts) + "  }\n"

    chains, to_nic, from_nic = [], [], []
    for i, n in enumerate(nics or []):  # a NIC's own ACLs come before the network's
        chains += [chain(f"nic{i}_ingress", list(n.ingress)),
                   chain(f"nic{i}_egress", list(n.egress))]
        from_nic.append(f"iifname {br} ether saddr {n.hwaddr} jump nic{i}_egress")
        for addr in n.addresses:
            ipv = "ip6" if ":" in addr else "ip"
            to_nic.append(f"oifname {br} {ipv} daddr {addr} jump nic{i}_ingress")
    own = ingress is not None and egress is not None
    if own:
        chains += [chain("acl_ingress", ingress or []), chain("acl_egress", egress or [])]
    fwd_in = [f"iifname {br} jump acl_egress"] if own else []
    fwd_out = [f"oifname {br} jump acl_ingress"] if own else []
    return (
        f"table inet {t} {{}}\n"
        f"delete table inet {t}\n"
        f"table inet {t} {{\n"
        + "".join(chains)
        + chain("forward", [
            "type filter hook forward priority 1; policy accept;",
            f"iifname {br} ct state established,related accept",
            f"oifname {br} ct state established,related accept",
            *from_nic, *to_nic, *fwd_in, *fwd_out])
        + chain("input", [
            "type filter hook input priority 1; policy accept;",
            f"iifname {br} ct state established,related accept",
            f"iifname {br} udp dport {{ 53, 67, 547 }} accept",
            f"iifname {br} tcp dport 53 accept",
            f"iifname {br} icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, "
            "nd-neighbor-advert } accept",
            *from_nic, *fwd_in])
        + chain("output", [
            "type filter hook output priority 1; policy accept;",
            f"oifname {br} ct state established,related accept",
            f"oifname {br} udp sport {{ 53, 67, 547 }} accept",
            f"oifname {br} icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, "
            "nd-neighbor-advert } accept",
            *to_nic, *fwd_out])
        + "}\n")


def apply_acl_table(network: str, bridge: str, ingress: list[str] | None,
                    egress: list[str] | None, nics: list[NicAcl] | None = None) -> None:
    """Load the table (``ingress``/``egress`` None: the network itself has no ACLs)."""
    res = _run(["-f", "-"], acl_ruleset(network, bridge, ingress, egress, nics))
    if res.returncode != 0:
        raise Internal(f"Failed to load the ACL rules of network {network!r}: "
                       f"{res.stderr.strip()}")


def delete_named_table(table: str) -> None:
    """Remove ``inet <table>`` if it exists."""
    if _run(["list", "table", "inet", table]).returncode != 0:
        return
    res = _run(["delete", "table", "inet", table])
    if res.returncode != 0 and _run(["list", "table", "inet", table]).returncode == 0:
        raise Internal(f"Failed to delete nftables table {table}: {res.stderr.strip()}")


# -- network forwards: DNAT from a listen address to instances -------------------------------

def forward_table_name(network: str) -> str:
    return f"corral-fwd-{network}"


def forward_ruleset(network: str, dnat: list[str], bridge: str = "",
                    subnets: tuple[str, ...] = ()) -> str:
    """``dnat``: statements like ``ip daddr L tcp dport 80 dnat ip to T:8080``, applied to
    packets arriving from elsewhere (prerouting) and to the host's own (output).

    Hairpin: an instance on the bridge that uses a forward to reach a sibling would get
    the sibling's answer straight over the bridge, from an address it never talked to;
    such flows (from a ``subnets`` address, forwarded back into ``bridge``) are
    masqueraded to the host, as LXD does."""
    t = forward_table_name(network)
    body = "".join(f"    {s}\n" for s in dnat)
    hairpin = "".join(
        f'    {"ip6" if ":" in net else "ip"} saddr {net} oifname "{bridge}" '
        f"ct status dnat masquerade\n" for net in subnets) if bridge else ""
    return (
        f"table inet {t} {{}}\n"
        f"delete table inet {t}\n"
        f"table inet {t} {{\n"
        f"  chain prerouting {{\n"
        f"    type nat hook prerouting priority -100; policy accept;\n{body}  }}\n"
        f"  chain output {{\n"
        f"    type nat hook output priority -100; policy accept;\n{body}  }}\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority 100; policy accept;\n{hairpin}  }}\n"
        f"}}\n")


def apply_forward_table(network: str, dnat: list[str], bridge: str = "",
                        subnets: tuple[str, ...] = ()) -> None:
    if not dnat:
        delete_named_table(forward_table_name(network))
        return
    res = _run(["-f", "-"], forward_ruleset(network, dnat, bridge, subnets))
    if res.returncode != 0:
        raise Internal(f"Failed to load the forwards of network {network!r}: "
                       f"{res.stderr.strip()}")
