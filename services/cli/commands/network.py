"""``corral network list|show|create|delete|set|unset|list-leases|info`` (and ``acl ...``,
``forward ...``): a client of /1.0/networks."""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group
from . import network_acl, network_forward
from .instances import parse_pairs


def _path(name: str, tail: str = "") -> str:
    return f"/1.0/networks/{quote(name, safe='')}{tail}"


def _row(net: dict[str, Any]) -> dict[str, Any]:
    config = net.get("config") or {}
    return {"name": net["name"], "type": net["type"],
            "managed": "YES" if net.get("managed") else "NO",
            "ipv4": config.get("ipv4.address", ""), "description": net.get("description", ""),
            "used_by": len(net.get("used_by") or []), "state": (net.get("status") or "").upper()}


def list_(args: Namespace) -> None:
    nets = from_args(args).get("/1.0/networks", recursion=1)
    emit([_row(n) for n in nets],
         ["name", "type", "managed", "ipv4", "description", "used_by", "state"], args.fmt,
         raw=nets)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(_path(args.name)))


def create(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/networks", {
        "name": args.name, "type": args.type, "config": parse_pairs(args.config),
        "description": args.description})
    print(f"Network {args.name} created")


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", _path(args.name))
    print(f"Network {args.name} deleted")


def list_leases(args: Namespace) -> None:
    leases = from_args(args).get(_path(args.name, "/leases"))
    emit(leases, ["hostname", "hwaddr", "address", "type"], args.fmt, raw=leases)


def set_(args: Namespace) -> None:
    from_args(args).request("PATCH", _path(args.name), {"config": parse_pairs(args.config)})


def unset(args: Namespace) -> None:
    from_args(args).request("PATCH", _path(args.name), {"config": {args.key: ""}})


def info(args: Namespace) -> None:
    print_yaml(from_args(args).get(_path(args.name, "/state")))


def register(sub: Any) -> None:
    net = group(sub, "network")
    p = command(net, "list", list_, "List managed networks and the host's other interfaces.")
    add_format(p)
    p = command(net, "show", show, "Show one network's configuration.")
    p.add_argument("name")
    p = command(net, "create", create, "Create a network, e.g. `corral network create br1 "
                "ipv4.address=auto`.")
    p.add_argument("name")
    p.add_argument("config", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--type", "-t", default="bridge", help="network type")
    p.add_argument("--description", default="")
    p = command(net, "delete", delete, "Delete a network (refused while instances or "
                "profiles use it).")
    p.add_argument("name")
    p = command(net, "list-leases", list_leases, "List the DHCP leases of a managed network.")
    p.add_argument("name")
    add_format(p)
    p = command(net, "set", set_, "Set network config keys (`corral network set br0 "
                "security.acls=web`).")
    p.add_argument("name")
    p.add_argument("config", nargs="+", metavar="KEY=VALUE")
    p = command(net, "unset", unset, "Unset a network config key.")
    p.add_argument("name")
    p.add_argument("key")
    network_acl.register(net)
    network_forward.register(net)
    p = command(net, "info", info, "Show a network's live state: addresses, counters, bridge "
                "ports.")
    p.add_argument("name")
