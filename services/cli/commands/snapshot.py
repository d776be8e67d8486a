"""``corral snapshot`` and ``corral restore``: instance snapshots.

``corral snapshot c1 [name] [--reuse] [--no-expiry]`` takes one (as ``lxc snapshot``);
``corral snapshot list|show|rename|delete c1 ...`` manage them; ``corral restore c1 s0``
restores (a running instance is stopped, restored and started again by the server).
Why one ``snapshot`` command rather than subcommands only: ``lxc snapshot c1`` is what
people type, and the words list/show/rename/delete/create cannot be instance names here
(use ``corral snapshot create list`` for an instance called ``list``).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, UsageError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command
from .instances import ipath, wait_op

NO_EXPIRY = "0001-01-01T00:00:00Z"
ACTIONS = ("create", "list", "show", "rename", "delete")


def spath(instance: str, snap: str = "") -> str:
    return ipath(instance, "/snapshots" + (f"/{quote(snap, safe='')}" if snap else ""))


def _split(target: str, snap: str | None = None) -> tuple[str, str | None]:
    """``c1 s0`` or ``c1/s0`` -> ("c1", "s0")."""
    inst, sep, short = target.partition("/")
    if sep:
        if snap:
            raise UsageError(f"Invalid instance name: {target}")
        return inst, short
    return inst, snap


def _need(args: list[str], n: int, usage: str) -> list[str]:
    if len(args) != n:
        raise UsageError(f"usage: corral snapshot {usage}")
    return args


def create(args: Namespace, rest: list[str]) -> None:
    if not 1 <= len(rest) <= 2:
        raise UsageError("usage: corral snapshot INSTANCE [NAME] [--reuse] [--no-expiry]")
    inst, name = _split(rest[0], rest[1] if len(rest) > 1 else None)
    c = from_args(args)
    if args.reuse and name:
        try:
            c.get(spath(inst, name))
        except APIError as exc:
            if exc.code != 404:
                raise
        else:
            wait_op(c, c.request("DELETE", spath(inst, name)), f"Deleting {inst}/{name}")
    body: dict[str, Any] = {"name": name or "", "stateful": bool(args.stateful)}
    if args.no_expiry:
        body["expires_at"] = NO_EXPIRY
    op = wait_op(c, c.request("POST", spath(inst), body), f"Snapshotting {inst}")
    made = [u.rsplit("/", 1)[-1] for u in
            ((op.get("resources") or {}).get("instances_snapshots") or [])]
    if made:
        print(f"Snapshot {inst}/{made[0].split('?')[0]} created")


def list_(args: Namespace, rest: list[str]) -> None:
    (inst,) = _need(rest, 1, "list INSTANCE")
    items = from_args(args).get(spath(inst), recursion=1)
    rows = [{"name": s["name"], "taken at": s["created_at"][:19].replace("T", " "),
             "expires at": "" if s.get("expires_at", NO_EXPIRY).startswith("0001")
             else s["expires_at"][:19].replace("T", " "),
             "stateful": "YES" if s.get("stateful") else "NO"} for s in items]
    emit(rows, ["name", "taken at", "expires at", "stateful"], args.fmt, raw=items)


def show(args: Namespace, rest: list[str]) -> None:
    inst, snap = _split(*_need(rest, 2, "show INSTANCE SNAPSHOT")) if len(rest) == 2 \
        else _split(*_need(rest, 1, "show INSTANCE/SNAPSHOT"))
    print_yaml(from_args(args).get(spath(inst, snap or "")))


def rename(args: Namespace, rest: list[str]) -> None:
    if len(rest) == 2 and "/" in rest[0]:
        (inst, snap), new = _split(rest[0]), rest[1]
    else:
        inst, snap, new = _need(rest, 3, "rename INSTANCE SNAPSHOT NEW_NAME")
    c = from_args(args)
    wait_op(c, c.request("POST", spath(inst, snap or ""), {"name": new}),
            f"Renaming {inst}/{snap}")


def delete(args: Namespace, rest: list[str]) -> None:
    if not rest:
        raise UsageError("usage: corral snapshot delete INSTANCE SNAPSHOT [SNAPSHOT...]")
    inst, first = _split(rest[0], None)
    names = ([first] if first else []) + rest[1:]
    if not names:
        raise UsageError("usage: corral snapshot delete INSTANCE SNAPSHOT [SNAPSHOT...]")
    c = from_args(args)
    for snap in names:
        wait_op(c, c.request("DELETE", spath(inst, snap)), f"Deleting {inst}/{snap}")


def snapshot(args: Namespace) -> None:
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ACTIONS else "create"
    {"create": create, "list": list_, "show": show, "rename": rename,
     "delete": delete}[action](args, words)


def restore(args: Namespace) -> None:
    inst, snap = _split(args.instance, args.snapshot)
    if not snap:
        raise UsageError("usage: corral restore INSTANCE SNAPSHOT")
    c = from_args(args)
    body = {"restore": f"{inst}/{snap}", "stateful": bool(args.stateful)}
    wait_op(c, c.request("PUT", ipath(inst), body), f"Restoring {inst} from {snap}")


def register(sub: Any) -> None:
    p = command(sub, "snapshot", snapshot, description=(
        "corral snapshot INSTANCE [NAME] [--reuse] [--no-expiry]: take a snapshot.\n"
        "corral snapshot list INSTANCE | show INSTANCE SNAPSHOT | "
        "rename INSTANCE SNAPSHOT NEW | delete INSTANCE SNAPSHOT..."))
    p.add_argument("words", nargs="+", metavar="ARG",
                   help="INSTANCE [NAME], or list/show/rename/delete and their arguments")
    p.add_argument("--reuse", action="store_true",
                   help="replace a snapshot of the same name if there is one")
    p.add_argument("--no-expiry", action="store_true",
                   help="never expire (ignore the instance's snapshots.expiry)")
    p.add_argument("--stateful", action="store_true",
                   help="also save the running state (refused where unsupported)")
    add_format(p)
    r = command(sub, "restore", restore)
    r.add_argument("instance")
    r.add_argument("snapshot", nargs="?")
    r.add_argument("--stateful", action="store_true")
