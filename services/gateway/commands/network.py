"""``corral network list|show|create|delete|list-leases|info``: a client of /1.0/networks."""


from typing import Any, List, Optional
from urllib.parse import quote

import typer
import yaml


def _path(name: str, tail: str = "") -> str:
    return f"/1.0/networks/{quote(name, safe='')}{tail}"


def _row(net: dict[str, Any]) -> dict[str, Any]:
    config = net.get("config") or {}
    return {"name": net["name"], "type": net["type"],
            "managed": "YES" if net.get("managed") else "NO",
            "ipv4": config.get("ipv4.address", ""), "description": net.get("description", ""),
            "used_by": len(net.get("used_by") or []), "state": (net.get("status") or "").upper()}


# No "from __future__ import annotations": typer must see the real option types, and
# Format is only imported inside register().
def register(app: typer.Typer) -> None:
    # Imported here: cli.py loads this module while it is itself being imported.
    from ..cli import Format, client, emit
    from ..client import APIError

    net_app = typer.Typer(help="Manage networks (bridges with DHCP, DNS and NAT).",
                          no_args_is_help=True)
    app.add_typer(net_app, name="network")

    @net_app.command("list")
    def list_(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List managed networks and the host's other interfaces."""
        nets = client().get("/1.0/networks", recursion=1)
        emit([_row(n) for n in nets],
             ["name", "type", "managed", "ipv4", "description", "used_by", "state"], fmt,
             raw=nets)

    @net_app.command("show")
    def show(name: str) -> None:
        """Show one network's configuration."""
        print(yaml.safe_dump(client().get(_path(name)), sort_keys=False), end="")

    @net_app.command("create")
    def create(name: str,
               config: Optional[List[str]] = typer.Argument(None, help="key=value ..."),
               type_: str = typer.Option("bridge", "--type", "-t", help="network type"),
               description: str = typer.Option("", "--description")) -> None:
        """Create a network, e.g. `corral network create br1 ipv4.address=auto`."""
        cfg: dict[str, str] = {}
        for item in config or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise APIError(f"Bad key=value pair: {item!r}")
            cfg[k] = v
        client().request("POST", "/1.0/networks", {"name": name, "type": type_,
                                                   "config": cfg, "description": description})
        print(f"Network {name} created")

    @net_app.command("delete")
    def delete(name: str) -> None:
        """Delete a network (refused while instances or profiles use it)."""
        client().request("DELETE", _path(name))
        print(f"Network {name} deleted")

    @net_app.command("list-leases")
    def list_leases(name: str,
                    fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List the DHCP leases of a managed network."""
        leases = client().get(_path(name, "/leases"))
        emit(leases, ["hostname", "hwaddr", "address", "type"], fmt, raw=leases)

    @net_app.command("info")
    def info(name: str) -> None:
        """Show a network's live state: addresses, counters, bridge ports."""
        print(yaml.safe_dump(client().get(_path(name, "/state")), sort_keys=False), end="")
