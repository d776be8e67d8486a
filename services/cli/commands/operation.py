"""``corral operation list|show|wait|delete``: LXD's operations."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from ..client import from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group


def _row(op: dict[str, Any]) -> dict[str, Any]:
    return {"id": op["id"], "class": op["class"], "description": op["description"],
            "status": op["status"], "cancelable": "YES" if op["may_cancel"] else "NO",
            "created": op["created_at"]}


def list_(args: Namespace) -> None:
    grouped = from_args(args).get("/1.0/operations", recursion=1)
    ops = sorted((op for ops in grouped.values() for op in ops), key=lambda o: o["created_at"])
    emit([_row(o) for o in ops],
         ["id", "class", "description", "status", "cancelable", "created"], args.fmt, raw=ops)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(f"/1.0/operations/{args.id}"))


def wait(args: Namespace) -> int:
    op = from_args(args).get(f"/1.0/operations/{args.id}/wait", timeout=args.timeout)
    print_yaml(op)
    return 1 if op["status"] in ("Failure", "Cancelled") else 0


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", f"/1.0/operations/{args.id}")


def register(sub: Any) -> None:
    ops = group(sub, "operation")
    p = command(ops, "list", list_, "List operations (finished ones stay for the retention "
                "time, 10 minutes by default).")
    add_format(p)
    p = command(ops, "show", show, "Show one operation.")
    p.add_argument("id")
    p = command(ops, "wait", wait, "Wait for an operation to finish; exits non-zero when it "
                "failed.")
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=-1, help="seconds, -1: forever")
    p = command(ops, "delete", delete, "Cancel a running operation.")
    p.add_argument("id")
