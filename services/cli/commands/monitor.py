"""``corral monitor``: print LXD events as they happen (the ``/1.0/events`` websocket)."""

from __future__ import annotations

import json
from argparse import Namespace
from typing import Any

from ..client import from_args
from ..output import add_format, dump_yaml
from ..parsing import command


def monitor(args: Namespace) -> None:
    import asyncio

    from ..streams import monitor as stream

    params = {}
    if args.types:
        params["type"] = args.types
    if args.all_projects:
        params["all-projects"] = "true"

    def show(event: Any) -> None:
        if args.fmt == "json":
            print(json.dumps(event), flush=True)
        else:
            print(dump_yaml(event), flush=True)

    asyncio.run(stream(from_args(args).socket, params, show, args.count))


def register(sub: Any) -> None:
    p = command(sub, "monitor", monitor)
    p.add_argument("--type", dest="types", default="", help="lifecycle,operation,logging")
    add_format(p, default="yaml")
    p.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    p.add_argument("--all-projects", action="store_true")
