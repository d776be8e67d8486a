"""``corral profile list|show|create|edit|delete|add|remove``."""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group
from .config import edit_yaml, read, write
from .instances import ipath

PROFILE_KEYS = ("config", "description", "devices")


def ppath(name: str) -> str:
    return f"/1.0/profiles/{quote(name, safe='')}"


def list_(args: Namespace) -> None:
    items = from_args(args).get("/1.0/profiles", recursion=1)
    rows = [{"name": p["name"], "description": p.get("description", ""),
             "used_by": len(p.get("used_by") or [])} for p in items]
    emit(rows, ["name", "description", "used_by"], args.fmt, raw=items)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(ppath(args.name)))


def create(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/profiles", {"name": args.name,
                                                      "description": args.description})
    print(f"Profile {args.name} created")


def edit(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ppath(args.name))
    doc: dict[str, Any] = {k: obj.get(k) for k in PROFILE_KEYS}
    if not sys.stdin.isatty():
        import yaml

        new = yaml.safe_load(sys.stdin.read()) or {}
        if not isinstance(new, dict):
            raise APIError("Invalid YAML on stdin: expected a mapping")
    else:
        new = edit_yaml(doc)
    write(c, ppath(args.name), {**doc, **new}, etag, PROFILE_KEYS)


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", ppath(args.name))
    print(f"Profile {args.name} deleted")


def add(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ipath(args.instance))
    if args.profile in obj["profiles"]:
        raise APIError(f"Profile {args.profile} is already applied to {args.instance}")
    obj["profiles"].append(args.profile)
    write(c, ipath(args.instance), obj, etag)
    print(f"Profile {args.profile} added to {args.instance}")


def remove(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ipath(args.instance))
    if args.profile not in obj["profiles"]:
        raise APIError(f"Profile {args.profile} isn't currently applied to {args.instance}")
    obj["profiles"].remove(args.profile)
    write(c, ipath(args.instance), obj, etag)
    print(f"Profile {args.profile} removed from {args.instance}")


def register(sub: Any) -> None:
    prof = group(sub, "profile")
    p = command(prof, "list", list_, "List profiles and how many instances use each.")
    add_format(p)
    p = command(prof, "show", show, "Show a profile as YAML.")
    p.add_argument("name")
    p = command(prof, "create", create, "Create an empty profile (fill it with `profile "
                "edit`).")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p = command(prof, "edit", edit, "Edit a profile in $EDITOR, or from stdin when it is not "
                "a terminal.")
    p.add_argument("name")
    p = command(prof, "delete", delete, "Delete a profile (refused while instances use it).")
    p.add_argument("name")
    p = command(prof, "add", add, "Add a profile to an instance (applied after its current "
                "profiles).")
    p.add_argument("instance")
    p.add_argument("profile")
    p = command(prof, "remove", remove, "Remove a profile from an instance.")
    p.add_argument("instance")
    p.add_argument("profile")
