"""``corral storage``: list, show, create, delete, info of pools; ``volume ...`` (see
:mod:`.storage_volume`)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import UsageError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group


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


def list_(args: Namespace) -> None:
    pools = from_args(args).get("/1.0/storage-pools", recursion=1)
    rows = [{"name": p["name"], "driver": p["driver"],
             "source": p.get("config", {}).get("source", ""),
             "description": p.get("description", ""),
             "used by": len(p.get("used_by") or []), "state": p["status"].upper()}
            for p in sorted(pools, key=lambda p: p["name"])]
    emit(rows, ["name", "driver", "source", "description", "used by", "state"], args.fmt,
         raw=pools)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(_pool_url(args.name)))


def create(args: Namespace) -> None:
    cfg: dict[str, str] = {}
    for item in args.config:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"Bad key=value pair: {item!r}")
        cfg[k] = v
    from_args(args).request("POST", "/1.0/storage-pools", {
        "name": args.name, "driver": args.driver, "config": cfg,
        "description": args.description})
    print(f"Storage pool {args.name} created")


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", _pool_url(args.name))
    print(f"Storage pool {args.name} deleted")


def info(args: Namespace) -> None:
    c = from_args(args)
    pool = c.get(_pool_url(args.name))
    res = c.get(_pool_url(args.name) + "/resources")
    used: dict[str, list[str]] = {}
    for u in pool.get("used_by") or []:
        parts = u.split("?")[0].split("/")
        kind, what = (("volumes", parts[-1]) if parts[2] == "storage-pools"
                      else (parts[2], parts[3]))
        used.setdefault(kind, []).append(what)
    space = res.get("space", {})
    print_yaml({
        "info": {"name": pool["name"], "driver": pool["driver"],
                 "description": pool.get("description", ""), "status": pool["status"],
                 "total space": _size(space.get("total", 0)),
                 "space used": _size(space.get("used", 0))},
        "used by": used,
    })


def register(sub: Any) -> None:
    storage = group(sub, "storage")
    p = command(storage, "list", list_, "List storage pools.")
    add_format(p)
    p = command(storage, "show", show, "Show a storage pool's configuration.")
    p.add_argument("name")
    p = command(storage, "create", create, "Create a storage pool: `corral storage create p1 "
                "btrfs size=2GiB`.")
    p.add_argument("name")
    p.add_argument("driver")
    p.add_argument("config", nargs="*", metavar="KEY=VALUE", help="settings")
    p.add_argument("--description", default="")
    p = command(storage, "delete", delete, "Delete a storage pool (refused while volumes or "
                "profiles use it).")
    p.add_argument("name")
    p = command(storage, "info", info, "Show a pool's usage and what uses it.")
    p.add_argument("name")

    from . import storage_volume

    storage_volume.register(group(storage, "volume", "Storage volumes (custom volumes: "
                                  "create, snapshot, copy, attach...)."))
