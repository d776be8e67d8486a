"""``corral storage``: list, show, create, delete, info of pools; ``volume list POOL``."""

from typing import Any, List
from urllib.parse import quote

import typer
import yaml


def _pool_url(name: str) -> str:
    return f"/1.0/storage-pools/{quote(name, safe='')}"


def _size(n: int) -> str:
    """Bytes as LXD's `lxc storage info` prints them (IEC, two decimals)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{n}B"


def register(app: typer.Typer) -> None:
    from ..cli import Format, client, emit

    storage = typer.Typer(help="Manage storage pools and volumes.", no_args_is_help=True)
    volume = typer.Typer(help="Storage volumes.", no_args_is_help=True)
    storage.add_typer(volume, name="volume")
    app.add_typer(storage, name="storage")

    @storage.command("list")
    def list_(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List storage pools."""
        pools = client().get("/1.0/storage-pools", recursion=1)
        rows = [{"name": p["name"], "driver": p["driver"],
                 "source": p.get("config", {}).get("source", ""),
                 "description": p.get("description", ""),
                 "used by": len(p.get("used_by") or []), "state": p["status"].upper()}
                for p in sorted(pools, key=lambda p: p["name"])]
        emit(rows, ["name", "driver", "source", "description", "used by", "state"], fmt,
             raw=pools)

    @storage.command("show")
    def show(name: str) -> None:
        """Show a storage pool's configuration."""
        print(yaml.safe_dump(client().get(_pool_url(name)), sort_keys=False), end="")

    @storage.command("create")
    def create(name: str, driver: str,
               config: List[str] = typer.Argument(None, help="key=value settings"),
               description: str = typer.Option("", "--description")) -> None:
        """Create a storage pool: `corral storage create p1 btrfs size=2GiB`."""
        cfg: dict[str, str] = {}
        for item in config or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise typer.BadParameter(f"Bad key=value pair: {item!r}")
            cfg[k] = v
        client().request("POST", "/1.0/storage-pools",
                         {"name": name, "driver": driver, "config": cfg,
                          "description": description})
        print(f"Storage pool {name} created")

    @storage.command("delete")
    def delete(name: str) -> None:
        """Delete a storage pool (refused while volumes or profiles use it)."""
        client().request("DELETE", _pool_url(name))
        print(f"Storage pool {name} deleted")

    @storage.command("info")
    def info(name: str) -> None:
        """Show a pool's usage and what uses it."""
        c = client()
        pool = c.get(_pool_url(name))
        res = c.get(_pool_url(name) + "/resources")
        used: dict[str, list[str]] = {}
        for u in pool.get("used_by") or []:
            parts = u.split("?")[0].split("/")
            kind, what = (("volumes", parts[-1]) if parts[2] == "storage-pools"
                          else (parts[2], parts[3]))
            used.setdefault(kind, []).append(what)
        space = res.get("space", {})
        doc: dict[str, Any] = {
            "info": {"name": pool["name"], "driver": pool["driver"],
                     "description": pool.get("description", ""), "status": pool["status"],
                     "total space": _size(space.get("total", 0)),
                     "space used": _size(space.get("used", 0))},
            "used by": used,
        }
        print(yaml.safe_dump(doc, sort_keys=False), end="")

    @volume.command("list")
    def volume_list(pool: str, fmt: Format = typer.Option(Format.table, "--format", "-f")
                    ) -> None:
        """List the volumes of a pool."""
        vols = client().get(_pool_url(pool) + "/volumes", recursion=1)
        rows = [{"type": v["type"], "name": v["name"], "description": v.get("description", ""),
                 "content-type": v.get("content_type", ""),
                 "used by": len(v.get("used_by") or [])} for v in vols]
        emit(rows, ["type", "name", "description", "content-type", "used by"], fmt, raw=vols)
