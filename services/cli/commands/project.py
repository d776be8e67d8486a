"""``corral project list|show|create|set|unset|get|rename|delete``.

The other commands work in a project with ``--project NAME`` (anywhere on the command
line) or ``CORRAL_PROJECT``: the client adds ``?project=`` to every request (client.py).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group
from .config import read, write

PROJECT_KEYS = ("config", "description")


def ppath(name: str) -> str:
    return f"/1.0/projects/{quote(name, safe='')}"


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise APIError(f"Invalid config {item!r}: use KEY=VALUE")
        out[key] = value
    return out


def list_(args: Namespace) -> None:
    items = from_args(args).get("/1.0/projects", recursion=1)

    def feature(p: dict[str, Any], key: str) -> str:
        return "YES" if (p.get("config") or {}).get(key) == "true" else "NO"

    rows = [{"name": p["name"], "images": feature(p, "features.images"),
             "profiles": feature(p, "features.profiles"),
             "storage_volumes": feature(p, "features.storage.volumes"),
             "networks": feature(p, "features.networks"),
             "description": p.get("description", ""),
             "used_by": len(p.get("used_by") or [])} for p in items]
    emit(rows, ["name", "images", "profiles", "storage_volumes", "networks", "description",
                "used_by"], args.fmt, raw=items)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(ppath(args.name)))


def create(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/projects", {
        "name": args.name, "description": args.description,
        "config": _pairs(args.config or [])})
    print(f"Project {args.name} created")


def get(args: Namespace) -> None:
    print((from_args(args).get(ppath(args.name)).get("config") or {}).get(args.key, ""))


def set_(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ppath(args.name))
    config = {**(obj.get("config") or {}), **_pairs(args.pairs)}
    write(c, ppath(args.name), {**obj, "config": config}, etag, PROJECT_KEYS)


def unset(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ppath(args.name))
    config = dict(obj.get("config") or {})
    config.pop(args.key, None)
    write(c, ppath(args.name), {**obj, "config": config}, etag, PROJECT_KEYS)


def rename(args: Namespace) -> None:
    from .instances import wait_op

    c = from_args(args)
    wait_op(c, c.request("POST", ppath(args.name), {"name": args.new_name}), "Renaming")
    print(f"Project {args.name} renamed to {args.new_name}")


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", ppath(args.name))
    print(f"Project {args.name} deleted")


def register(sub: Any) -> None:
    proj = group(sub, "project")
    p = command(proj, "list", list_, "List projects, their features and how much uses each.")
    add_format(p)
    p = command(proj, "show", show, "Show a project as YAML.")
    p.add_argument("name")
    p = command(proj, "create", create, "Create a project (features.images, profiles and "
                "storage.volumes on by default, as LXD).")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("-c", "--config", action="append", metavar="KEY=VALUE",
                   help="a config key, e.g. limits.instances=5 (repeatable)")
    p = command(proj, "get", get, "Print one config key of a project.")
    p.add_argument("name")
    p.add_argument("key")
    p = command(proj, "set", set_, "Set config keys of a project (limits.*, restricted.*, "
                "features.* while it is empty).")
    p.add_argument("name")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    p = command(proj, "unset", unset, "Remove a config key from a project.")
    p.add_argument("name")
    p.add_argument("key")
    p = command(proj, "rename", rename, "Rename an empty project.")
    p.add_argument("name")
    p.add_argument("new_name")
    p = command(proj, "delete", delete, "Delete an empty project.")
    p.add_argument("name")
