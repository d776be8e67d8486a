"""``corral exec NAME [--env K=V] [--cwd DIR] [--user N] -- CMD...``: LXD's exec client.

A pty when stdin and stdout are terminals (raw mode, window size followed), else three
pipes; stdin is forwarded, signals (^C when not in raw mode, SIGTERM, SIGHUP) are
forwarded over the control websocket, and the command's exit code becomes ours.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any

from ..client import UsageError, from_args
from ..parsing import command


def exec_(args: Namespace) -> int:
    import asyncio

    from ..streams import run_exec, term_size

    environment = {}
    for item in args.env:
        k, _sep, v = item.partition("=")
        if not k:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        environment[k] = v
    interactive = os.isatty(0) and os.isatty(1)
    if args.force_interactive or args.force_pipes:
        interactive = args.force_interactive
    if interactive and "TERM" in os.environ:
        environment.setdefault("TERM", os.environ["TERM"])
    body: dict[str, Any] = {
        "command": args.command, "environment": environment, "interactive": interactive,
        "wait-for-websocket": True, "user": args.user, "group": args.group, "cwd": args.cwd}
    size = term_size() if interactive else None
    if size:
        body["width"], body["height"] = size
    return asyncio.run(run_exec(from_args(args).socket, args.name, body,
                                args.project or os.environ.get("CORRAL_PROJECT")
                                or "default"))


def register(sub: Any) -> None:
    p = command(sub, "exec", exec_)
    p.add_argument("name", help="the instance")
    p.add_argument("command", nargs="+", help="the command (after --)")
    p.add_argument("--env", action="append", default=[], help="K=V, repeatable")
    p.add_argument("--cwd", default="", help="working directory")
    p.add_argument("--user", type=int, default=0, help="uid to run as")
    p.add_argument("--group", type=int, default=0, help="gid to run as")
    p.add_argument("-t", dest="force_interactive", action="store_true", help="force a pty")
    p.add_argument("-T", dest="force_pipes", action="store_true", help="force pipes, no pty")
    p.add_argument("--project", default=None)
