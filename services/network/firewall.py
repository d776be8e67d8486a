"""A bridge network's ACL and forward tables, rebuilt whole from the records.

Why whole: a network's ACL rules depend on its config (``security.acls``, default
actions, subnets) and on every ACL it names; its forwards on their records. Rebuilding
the one table from all of them (atomically, ``nft -f``) after any change of any of them
leaves no rule of an old state behind, and at service start recreates what a reboot lost.
"""

from __future__ import annotations

from typing import Any

from .acls import acl_names, chain_statements
from .drivers import nft
from .drivers.base import parse_bool
from .drivers.bridge_config import gateway, gateway6
from .forwards import dnat_statements


def _chains(acls: list[dict[str, Any]], cfg: dict[str, str], subnets: dict[int, str | None]
            ) -> dict[str, list[str]]:
    chains = {}
    for direction in ("ingress", "egress"):
        prefix = f"security.acls.default.{direction}"
        chains[direction] = chain_statements(
            acls, direction, cfg.get(f"{prefix}.action") or "reject",
            parse_bool(f"{prefix}.logged", cfg.get(f"{prefix}.logged") or "false"), subnets)
    return chains


def apply_acls(rec: dict[str, Any], acl_records: list[dict[str, Any]],
               nics: list[dict[str, Any]] | None = None) -> None:
    """The ACL table of network ``rec``: its own ``security.acls`` and those of its NICs
    (``nic_acls`` entries); none when neither names an ACL."""
    name, cfg = rec["name"], rec["config"]
    names = acl_names(cfg.get("security.acls", ""))
    nics = [n for n in nics or [] if n.get("acls")]
    if rec.get("type", "bridge") != "bridge" or not (names or nics):
        nft.delete_named_table(nft.acl_table_name(name))
        return
    by_name = {a["name"]: a for a in acl_records}
    gw, gw6 = gateway(cfg), gateway6(cfg)
    subnets = {4: str(gw.network) if gw else None, 6: str(gw6.network) if gw6 else None}
    own = _chains([by_name[n] for n in names if n in by_name], cfg, subnets) if names else {}
    nic_acls = []
    for n in nics:
        chains = _chains([by_name[a] for a in n["acls"] if a in by_name], n.get("config", {}),
                         subnets)
        nic_acls.append(nft.NicAcl(n["hwaddr"], tuple(n.get("addresses", [])),
                                   tuple(chains["ingress"]), tuple(chains["egress"])))
    nft.apply_acl_table(name, name, own.get("ingress"), own.get("egress"), nic_acls)


def apply_forwards(rec: dict[str, Any], forward_records: list[dict[str, Any]]) -> None:
    mine = [f for f in forward_records if f["network"] == rec["name"]]
    gws = (gateway(rec["config"]), gateway6(rec["config"]))
    nft.apply_forward_table(rec["name"], [s for f in mine for s in dnat_statements(f)],
                            rec["name"], tuple(str(g.network) for g in gws if g))


def remove(name: str) -> None:
    """A deleted (or renamed) network's tables."""
    nft.delete_named_table(nft.acl_table_name(name))
    nft.delete_named_table(nft.forward_table_name(name))
