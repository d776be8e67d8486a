"""``corral console NAME``: attach to an instance's console (ctrl-a q detaches, as lxc).

``--show-log`` prints the console log instead, ``--clear`` empties it. Attaching asks
``POST /1.0/instances/<n>/console`` for a websocket operation and bridges our terminal
(raw mode when it is one) to its "0" websocket; window size goes over "control".
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from typing import Any

from ..client import from_args
from ..parsing import command
from .file import check


def console(args: Namespace) -> None:
    c = from_args(args)
    path = f"/1.0/instances/{args.name}/console"
    if args.clear:
        check(c.raw("DELETE", path, params={"project": args.project}))
        return
    if args.show_log:
        resp = c.raw("GET", path, params={"project": args.project})
        check(resp)
        sys.stdout.buffer.write(resp.content)
        return
    import asyncio

    from ..streams import attach_console

    if os.isatty(0):
        print("To detach from the console, press: <ctrl>+a q", file=sys.stderr)
    asyncio.run(attach_console(c.socket, args.name, args.project or c.project or "default"))


def register(sub: Any) -> None:
    p = command(sub, "console", console)
    p.add_argument("name", help="the instance")
    p.add_argument("--show-log", action="store_true", help="print the console log and exit")
    p.add_argument("--clear", action="store_true", help="empty the console log")
    p.add_argument("--project", default=None)
