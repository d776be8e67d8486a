"""``corral warning list|show|ack|delete``: LXD's warnings about this host (``lxc warning``)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from ..client import UsageError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group

COLUMNS = ["uuid", "type", "status", "severity", "count", "project", "last_seen"]


def _row(w: dict[str, Any]) -> dict[str, Any]:
    return {"uuid": w["uuid"], "type": w["type"], "status": w["status"].upper(),
            "severity": w["severity"].upper(), "count": w["count"],
            "project": w["project"], "last_seen": w["last_seen_at"]}


def list_(args: Namespace) -> None:
    """As ``lxc warning list``: acknowledged and resolved ones only with ``--all``."""
    found = from_args(args).get("/1.0/warnings", recursion=1) or []
    if not args.all:
        found = [w for w in found if w["status"] not in ("acknowledged", "resolved")]
    emit([_row(w) for w in found], COLUMNS, args.fmt, raw=found)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(f"/1.0/warnings/{args.uuid}"))


def ack(args: Namespace) -> None:
    from_args(args).request("PUT", f"/1.0/warnings/{args.uuid}", {"status": "acknowledged"})


def delete(args: Namespace) -> None:
    if not args.uuid and not args.all:
        raise UsageError("Give a warning's UUID, or --all to delete every warning")
    client = from_args(args)
    uuids = [args.uuid] if args.uuid else [
        w["uuid"] for w in client.get("/1.0/warnings", recursion=1) or []]
    for uuid in uuids:
        client.request("DELETE", f"/1.0/warnings/{uuid}")


def register(sub: Any) -> None:
    warnings = group(sub, "warning")
    p = command(warnings, "list", list_, "List warnings (new ones; --all for acknowledged "
                "and resolved too).")
    p.add_argument("--all", "-a", action="store_true", help="include acknowledged and "
                   "resolved warnings")
    add_format(p)
    p = command(warnings, "show", show, "Show one warning.")
    p.add_argument("uuid")
    p = command(warnings, "ack", ack, "Acknowledge a warning (hidden from the list).")
    p.add_argument("uuid")
    p = command(warnings, "delete", delete, "Delete a warning (it comes back if the host "
                "still has the problem when the service next looks).")
    p.add_argument("uuid", nargs="?")
    p.add_argument("--all", "-a", action="store_true", help="delete every warning")
