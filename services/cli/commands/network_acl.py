"""``corral network acl list|show|create|delete|rule add|rule remove``: /1.0/network-acls."""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group
from .instances import parse_pairs


def _path(name: str) -> str:
    return f"/1.0/network-acls/{quote(name, safe='')}"


def list_(args: Namespace) -> None:
    acls = from_args(args).get("/1.0/network-acls", recursion=1)
    rows = [{"name": a["name"], "description": a.get("description", ""),
             "used_by": len(a.get("used_by") or [])} for a in acls]
    emit(rows, ["name", "description", "used_by"], args.fmt, raw=acls)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(_path(args.name)))


def create(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/network-acls", {
        "name": args.name, "config": parse_pairs(args.config),
        "description": args.description})
    print(f"Network ACL {args.name} created")


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", _path(args.name))
    print(f"Network ACL {args.name} deleted")


def _writable(acl: dict[str, Any]) -> dict[str, Any]:
    return {k: acl.get(k) for k in ("description", "ingress", "egress", "config")}


def rule_add(args: Namespace) -> None:
    client = from_args(args)
    acl = client.get(_path(args.name))
    rule = parse_pairs(args.rule)
    rule.setdefault("state", "enabled")
    acl[args.direction] = [*(acl.get(args.direction) or []), rule]
    client.request("PUT", _path(args.name), _writable(acl))


def rule_remove(args: Namespace) -> None:
    """Remove the rules matching every given key=value (exactly one unless --force)."""
    client = from_args(args)
    acl = client.get(_path(args.name))
    want = parse_pairs(args.rule)
    rules = acl.get(args.direction) or []
    keep = [r for r in rules if any(r.get(k, "") != v for k, v in want.items())]
    removed = len(rules) - len(keep)
    if removed == 0:
        raise SystemExit("Error: No matching rule(s) found")
    if removed > 1 and not args.force:
        raise SystemExit("Error: Multiple rules match. Use --force to remove them all")
    acl[args.direction] = keep
    client.request("PUT", _path(args.name), _writable(acl))


def register(net: Any) -> None:
    acl = group(net, "acl", "Manage network ACLs (firewall rules of bridge networks).")
    p = command(acl, "list", list_, "List network ACLs.")
    add_format(p)
    p = command(acl, "show", show, "Show a network ACL.")
    p.add_argument("name")
    p = command(acl, "create", create, "Create a network ACL (`corral network acl create "
                "web user.k=v`).")
    p.add_argument("name")
    p.add_argument("config", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--description", default="")
    p = command(acl, "delete", delete, "Delete a network ACL (refused while in use).")
    p.add_argument("name")
    rule = group(acl, "rule", "Add or remove ACL rules.")
    for verb, run, what in (("add", rule_add, "Add a rule (`corral network acl rule add web "
                                              "ingress action=allow protocol=tcp "
                                              "destination_port=80`)."),
                            ("remove", rule_remove, "Remove the rule matching the keys.")):
        p = command(rule, verb, run, what)
        p.add_argument("name")
        p.add_argument("direction", choices=("ingress", "egress"))
        p.add_argument("rule", nargs="+", metavar="KEY=VALUE")
        if verb == "remove":
            p.add_argument("--force", action="store_true", help="remove every match")
