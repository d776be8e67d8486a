"""Network ACLs (LXD's ``/1.0/network-acls``): records, LXD's rule checks, nftables rules.

An ACL is ``{name, description, ingress: [rule], egress: [rule], config, project}`` in the
``network_acls`` bucket; a rule is LXD's ``{action, state, description, source,
destination, protocol, source_port, destination_port, icmp_type, icmp_code}``. A bridge
network lists ACLs in ``security.acls`` and gets one nftables table of its own
(:func:`drivers.nft.apply_acl_table`), rebuilt whole whenever the network or one of its
ACLs changes. As LXD's bridge ACLs, they apply where traffic meets the bridge:
``egress`` is what instances send (into the host or through it), ``ingress`` what
reaches them; established flows pass, DHCP/DNS/NDP with the host always pass, and what
no rule matches gets ``security.acls.default.<direction>.action`` (reject by default).

Rules are tried in LXD's order: every ``drop`` rule, then ``reject``, then ``allow``.
"""

from __future__ import annotations

import re
from ipaddress import ip_address, ip_network
from typing import Any

from shared.api import check_etag, description, etag, string_map, url
from shared.errors import BadRequest, Conflict, NotFound
from shared.state import Store, key

ACTIONS = ("allow", "reject", "drop")
STATES = ("enabled", "disabled", "logged")
PROTOCOLS = ("", "icmp4", "icmp6", "tcp", "udp")
RULE_FIELDS = ("action", "state", "description", "source", "destination", "protocol",
               "source_port", "destination_port", "icmp_type", "icmp_code")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_PORT = re.compile(r"^(\d+)(?:-(\d+))?$")
_VERDICT = {"allow": "accept", "reject": "reject", "drop": "drop"}
_ORDER = {"drop": 0, "reject": 1, "allow": 2}


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest("No network ACL name provided")
    if not _NAME.match(name):
        raise BadRequest(f"Invalid network ACL name {name!r}: 1 to 63 letters, digits, "
                         "'-', '_' or '.', starting with a letter or digit")
    return name


def acl_url(name: str) -> str:
    return url("network-acls", name)


def acl_etag(rec: dict[str, Any]) -> str:
    return etag(rec["name"], rec.get("description", ""), rec["ingress"], rec["egress"],
                rec["config"])


def public(rec: dict[str, Any], used_by: list[str]) -> dict[str, Any]:
    """LXD's NetworkACL object."""
    return {"name": rec["name"], "description": rec.get("description", ""),
            "ingress": rec["ingress"], "egress": rec["egress"], "config": rec["config"],
            "used_by": used_by}


# -- rule checks -------------------------------------------------------------------------

def _subjects(field: str, value: str) -> list[str]:
    """Addresses, CIDRs, ranges ``a-b``, ``@internal``/``@external``; 400 otherwise."""
    out = []
    for subject in (s.strip() for s in value.split(",")):
        if not subject:
            continue
        if subject in ("@internal", "@external"):
            out.append(subject)
            continue
        try:
            if "-" in subject:
                start, end = (ip_address(p.strip()) for p in subject.split("-", 1))
                if start.version != end.version or start > end:
                    raise ValueError
                out.append(f"{start}-{end}")
            else:
                out.append(str(ip_network(subject, strict=False)) if "/" in subject
                           else str(ip_address(subject)))
        except ValueError:
            raise BadRequest(f"Invalid {field} {subject!r}: an IP address, CIDR, range "
                             "(a-b), @internal or @external (ACL names as subjects are "
                             "not supported on bridge networks)") from None
    return out


def _family(subject: str) -> int:
    if subject.startswith("@"):
        return 0
    return ip_address(subject.split("-")[0].split("/")[0]).version


def _ports(field: str, value: str) -> list[str]:
    out = []
    for part in (p.strip() for p in value.split(",")):
        m = _PORT.match(part)
        if not m or int(m.group(1)) > 65535 or (m.group(2) and (
                int(m.group(2)) > 65535 or int(m.group(2)) < int(m.group(1)))):
            raise BadRequest(f"Invalid {field} {part!r}: a port or range like 80 or "
                             "8000-8080")
        out.append(part)
    return out


def check_rule(direction: str, index: int, rule: Any) -> dict[str, str]:
    """LXD's rule validation (``validateRule``), as a 400 naming the rule."""
    try:
        return _check_rule(rule)
    except BadRequest as exc:
        raise BadRequest(f"Invalid {direction} rule {index}: {exc.message}") from None


def _check_rule(rule: Any) -> dict[str, str]:
    def bad(why: str) -> BadRequest:
        return BadRequest(why)

    if not isinstance(rule, dict):
        raise bad("a rule is an object")
    unknown = sorted(set(rule) - set(RULE_FIELDS))
    if unknown:
        raise bad(f"unknown fields {unknown} (known: {', '.join(RULE_FIELDS)})")
    r = {f: str(rule.get(f) or "").strip() for f in RULE_FIELDS}
    if r["action"] not in ACTIONS:
        raise bad(f"Action must be one of: {', '.join(ACTIONS)}")
    if r["state"] not in STATES:
        raise bad(f"State must be one of: {', '.join(STATES)}")
    if r["protocol"] not in PROTOCOLS:
        raise bad(f"Protocol must be one of: {', '.join(p for p in PROTOCOLS if p)}")
    families = set()
    for field in ("source", "destination"):
        if r[field]:
            subjects = _subjects(field, r[field])
            r[field] = ",".join(subjects)
            fams = {_family(s) for s in subjects} - {0}
            if r["protocol"] == "icmp4" and 6 in fams:
                raise bad(f"Cannot use IPv6 {field} addresses with \"icmp4\" protocol")
            if r["protocol"] == "icmp6" and 4 in fams:
                raise bad(f"Cannot use IPv4 {field} addresses with \"icmp6\" protocol")
            if fams:
                families.add(frozenset(fams))
    if len(families) == 2 and len(set().union(*families)) == 2 and \
            all(len(f) == 1 for f in families):
        raise bad("Conflicting IP family types used for Source and Destination")
    for field in ("source_port", "destination_port"):
        if r[field]:
            if r["protocol"] not in ("tcp", "udp"):
                raise bad(f"{field} needs protocol tcp or udp")
            r[field] = ",".join(_ports(field, r[field]))
    for field, high in (("icmp_type", 255), ("icmp_code", 255)):
        if r[field]:
            if r["protocol"] not in ("icmp4", "icmp6"):
                raise bad(f"{field} needs protocol icmp4 or icmp6")
            if not r[field].isdigit() or int(r[field]) > high:
                raise bad(f"Invalid {field} {r[field]!r}: an integer 0-{high}")
    return {k: v for k, v in r.items() if v or k in ("action", "state")}


def check_rules(direction: str, rules: Any) -> list[dict[str, str]]:
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise BadRequest(f"{direction} must be a list of rules")
    out: list[dict[str, str]] = []
    for i, rule in enumerate(rules):
        checked = check_rule(direction, i, rule)
        if checked in out:
            raise BadRequest(f"Duplicate of {direction} rule {out.index(checked)}")
        out.append(checked)
    return out


def check_config(config: Any) -> dict[str, str]:
    cfg = string_map("config", config)
    bad = sorted(k for k in cfg if not k.startswith("user."))
    if bad:
        raise BadRequest(f"Invalid config option {bad[0]!r} (a network ACL takes user.* "
                         "keys only)")
    return cfg


# -- nftables statements ---------------------------------------------------------------------

def _match_subjects(field: str, subjects: list[str], version: int, subnet: str | None
                    ) -> str | None:
    """The nft match of ``subjects`` of one family (None: the rule skips this family)."""
    ipv = "ip" if version == 4 else "ip6"
    direction = "saddr" if field == "source" else "daddr"
    plain = [s for s in subjects if not s.startswith("@") and _family(s) == version]
    internal = "@internal" in subjects and subnet
    external = "@external" in subjects and subnet
    if internal and not plain and not external:
        return f"{ipv} {direction} {subnet}"
    if external and not plain and not internal:
        return f"{ipv} {direction} != {subnet}"
    if internal:
        plain.append(subnet)  # type: ignore[arg-type]
    if not plain:
        return None
    return f"{ipv} {direction} {{ {', '.join(plain)} }}"


def rule_statements(acl: str, rule: dict[str, str], subnets: dict[int, str | None]
                    ) -> list[str]:
    """One rule as nft statements (one per address family it names, or one for both)."""
    src = rule["source"].split(",") if rule.get("source") else []
    dst = rule["destination"].split(",") if rule.get("destination") else []
    proto = rule.get("protocol", "")
    families: list[int | None] = [None]
    if src or dst or proto in ("icmp4", "icmp6"):
        families = [4, 6]
        if proto == "icmp4":
            families = [4]
        elif proto == "icmp6":
            families = [6]
    out = []
    for version in families:
        parts: list[str] = []
        if version is not None:
            parts.append(f"meta nfproto {'ipv4' if version == 4 else 'ipv6'}")
            skip = False
            for field, subjects in (("source", src), ("destination", dst)):
                if not subjects:
                    continue
                match = _match_subjects(field, subjects, version, subnets.get(version))
                if match is None:
                    skip = True
                    break
                parts.append(match)
            if skip:
                continue
        if proto in ("tcp", "udp"):
            parts.append(f"meta l4proto {proto}")
            for field, word in (("source_port", "sport"), ("destination_port", "dport")):
                if rule.get(field):
                    parts.append(f"{proto} {word} {{ {rule[field].replace(',', ', ')} }}")
        elif proto in ("icmp4", "icmp6"):
            icmp = "icmp" if proto == "icmp4" else "icmpv6"
            parts.append(f"meta l4proto {'icmp' if proto == 'icmp4' else 'ipv6-icmp'}")
            if rule.get("icmp_type"):
                parts.append(f"{icmp} type {rule['icmp_type']}")
            if rule.get("icmp_code"):
                parts.append(f"{icmp} code {rule['icmp_code']}")
        if rule.get("state") == "logged":
            parts.append(f'log prefix "corral-acl {acl[:20]}: "')
        parts.append(_VERDICT[rule["action"]])
        out.append(" ".join(parts))
    return out


def chain_statements(acls: list[dict[str, Any]], direction: str, default: str,
                     default_logged: bool, subnets: dict[int, str | None]) -> list[str]:
    """Every enabled rule of ``direction`` of these ACLs, drop first, then reject, then
    allow, then the default action."""
    rules = [(acl["name"], r) for acl in acls for r in acl.get(direction, [])
             if r.get("state", "enabled") != "disabled"]
    rules.sort(key=lambda item: _ORDER[item[1]["action"]])  # stable: ACL order kept
    out = [s for name, r in rules for s in rule_statements(name, r, subnets)]
    log = f'log prefix "corral-acl default {direction}: " ' if default_logged else ""
    out.append(log + _VERDICT[default])
    return out


# -- records ---------------------------------------------------------------------------------

def acl_names(value: str) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


class Acls:
    """The ACL records (one bucket, cached) and their changes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def records(self) -> list[dict[str, Any]]:
        return sorted(self.store.cached(), key=lambda r: r["name"])

    def find(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r["name"] == name), None)

    async def get(self, name: str) -> tuple[dict[str, Any], int]:
        found = await self.store.get(key(name))
        if found is None:
            raise NotFound(f"Network ACL {name!r} not found")
        return found

    def check_names(self, names: list[str], where: str) -> None:
        """Every ACL ``security.acls`` names must exist (400 naming the missing one)."""
        for name in names:
            if self.find(name) is None:
                raise BadRequest(f"Invalid {where} 'security.acls': network ACL {name!r} "
                                 "does not exist (create it with lxc network acl create)")

    @staticmethod
    def build(name: str, body: dict[str, Any], base: dict[str, Any] | None = None,
              patch: bool = False) -> dict[str, Any]:
        """A full record from a create/PUT/PATCH body (checked)."""
        base = base or {"name": name, "description": "", "ingress": [], "egress": [],
                        "config": {}, "project": "default"}
        rec = dict(base)
        if not patch or "description" in body:
            rec["description"] = description(body.get("description"))
        for direction in ("ingress", "egress"):
            if not patch or direction in body:
                rec[direction] = check_rules(direction, body.get(direction))
        if not patch or "config" in body:
            cfg = check_config(body.get("config"))
            rec["config"] = {**base["config"], **cfg} if patch else cfg
        return rec

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = validate_name(body.get("name"))
        rec = self.build(name, body)
        if self.find(name) is not None:
            raise Conflict(f"Network ACL {name!r} already exists")
        try:
            await self.store.create(key(name), rec, f"Network ACL {name!r}")
        except Conflict:
            raise Conflict(f"Network ACL {name!r} already exists") from None
        return rec

    async def update(self, name: str, body: dict[str, Any], expected: str | None,
                     patch: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The new record, stored; returns (old, new) so the caller can undo."""
        current, rev = await self.get(name)
        check_etag(expected, acl_etag(current))
        new = self.build(name, body, current, patch)
        await self.store.update(key(name), new, rev)
        return current, new

    async def restore(self, rec: dict[str, Any]) -> None:
        current, rev = await self.get(rec["name"])
        await self.store.update(key(rec["name"]), rec, rev)

    async def rename(self, name: str, new_name: Any, used: list[str]) -> dict[str, Any]:
        new_name = validate_name(new_name)
        rec, _rev = await self.get(name)
        if used:
            raise Conflict(f"Cannot rename network ACL {name!r}: it is in use by "
                           f"{', '.join(used)}")
        if self.find(new_name) is not None:
            raise Conflict(f"Network ACL {new_name!r} already exists")
        renamed = {**rec, "name": new_name}
        await self.store.create(key(new_name), renamed, f"Network ACL {new_name!r}")
        await self.store.delete(key(name))
        return renamed

    async def delete(self, name: str, used: list[str]) -> None:
        await self.get(name)
        if used:
            raise Conflict(f"Cannot delete network ACL {name!r}: it is in use by "
                           f"{', '.join(used)}")
        await self.store.delete(key(name))
