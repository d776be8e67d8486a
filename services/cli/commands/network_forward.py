"""``corral network forward list|show|create|delete|port add|port remove``."""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group
from .instances import parse_pairs


def _path(network: str, address: str = "") -> str:
    out = f"/1.0/networks/{quote(network, safe='')}/forwards"
    return f"{out}/{quote(address, safe='')}" if address else out


def list_(args: Namespace) -> None:
    fwds = from_args(args).get(_path(args.network), recursion=1)
    rows = [{"listen_address": f["listen_address"], "description": f.get("description", ""),
             "default_target_address": (f.get("config") or {}).get("target_address", ""),
             "ports": len(f.get("ports") or [])} for f in fwds]
    emit(rows, ["listen_address", "description", "default_target_address", "ports"],
         args.fmt, raw=fwds)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(_path(args.network, args.address)))


def create(args: Namespace) -> None:
    from_args(args).request("POST", _path(args.network), {
        "listen_address": args.address, "config": parse_pairs(args.config),
        "description": args.description})
    print(f"Network forward {args.address} created")


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", _path(args.network, args.address))
    print(f"Network forward {args.address} deleted")


def _writable(fwd: dict[str, Any]) -> dict[str, Any]:
    return {k: fwd.get(k) for k in ("description", "config", "ports")}


def port_add(args: Namespace) -> None:
    client = from_args(args)
    fwd = client.get(_path(args.network, args.address))
    fwd["ports"] = [*(fwd.get("ports") or []), {
        "protocol": args.protocol, "listen_port": args.listen_ports,
        "target_address": args.target_address, "target_port": args.target_ports or "",
        "description": ""}]
    client.request("PUT", _path(args.network, args.address), _writable(fwd))


def port_remove(args: Namespace) -> None:
    client = from_args(args)
    fwd = client.get(_path(args.network, args.address))
    ports = fwd.get("ports") or []
    keep = [p for p in ports if not (
        (args.protocol is None or p["protocol"] == args.protocol)
        and (args.listen_ports is None or p["listen_port"] == args.listen_ports))]
    if len(keep) == len(ports):
        raise SystemExit("Error: No matching port(s) found")
    if len(ports) - len(keep) > 1 and not args.force:
        raise SystemExit("Error: Multiple ports match. Use --force to remove them all")
    fwd["ports"] = keep
    client.request("PUT", _path(args.network, args.address), _writable(fwd))


def register(net: Any) -> None:
    fwd = group(net, "forward", "Manage network forwards (DNAT to instances).")
    p = command(fwd, "list", list_, "List a network's forwards.")
    p.add_argument("network")
    add_format(p)
    for verb, run, what in (("show", show, "Show a forward."),
                            ("delete", delete, "Delete a forward."),
                            ("create", create, "Create a forward (`corral network forward "
                                               "create br0 192.0.2.10 "
                                               "target_address=10.0.0.5`).")):
        p = command(fwd, verb, run, what)
        p.add_argument("network")
        p.add_argument("address", metavar="LISTEN_ADDRESS")
        if verb == "create":
            p.add_argument("config", nargs="*", metavar="KEY=VALUE")
            p.add_argument("--description", default="")
    port = group(fwd, "port", "Add or remove forwarded ports.")
    p = command(port, "add", port_add, "Forward ports (`corral network forward port add br0 "
                "192.0.2.10 tcp 80 10.0.0.5 8080`).")
    for arg in ("network", "address", "protocol", "listen_ports", "target_address"):
        p.add_argument(arg)
    p.add_argument("target_ports", nargs="?")
    p = command(port, "remove", port_remove, "Remove forwarded ports.")
    p.add_argument("network")
    p.add_argument("address")
    p.add_argument("protocol", nargs="?")
    p.add_argument("listen_ports", nargs="?")
    p.add_argument("--force", action="store_true")
