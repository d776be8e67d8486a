"""``corral bus credentials create|list|revoke``: NATS credentials for integrations.

These work on ``$CORRAL_DIR`` directly, not through the REST API: the bus users live in
root-only files beside nats-server (shared/auth.py), and a credential is handed out by
whoever may read them. After a change nats-server is told to reload (SIGHUP), which also
closes the connections of a revoked credential.
"""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..output import add_format
from ..parsing import command, group

ROLES = ("events", "reader", "operator")


def _dir(args: Namespace) -> Path:
    return (args.dir or Path(os.environ.get("CORRAL_DIR") or Path.cwd() / "var")).absolute()


def _run(fn: Any, *args: Any) -> Any:
    """Call into shared.auth, turning its errors into the CLI's."""
    from shared import auth

    from ..client import APIError, UsageError

    try:
        return fn(*args)
    except auth.AuthError as exc:
        raise (UsageError if exc.code == 400 else APIError)(exc.message, exc.code) from None
    except PermissionError as exc:
        raise APIError(f"{exc.filename}: permission denied (the bus users are root's)") \
            from None


def _reload(corral_dir: Path) -> None:
    from shared import auth

    if auth.reload_server(corral_dir) is None:
        print(f"nats-server for {corral_dir} is not running: the change applies when it "
              "starts")


def create(args: Namespace) -> None:
    from shared import auth

    corral_dir = _dir(args)
    path = _run(auth.create, corral_dir, args.name, args.role, args.project)
    _reload(corral_dir)
    print(path)


def list_(args: Namespace) -> None:
    from shared import auth

    from ..output import emit

    rows = _run(auth.integrations, _dir(args))
    emit(rows, ["name", "role", "project", "credentials"], args.fmt)


def revoke(args: Namespace) -> None:
    from shared import auth

    corral_dir = _dir(args)
    _run(auth.revoke, corral_dir, args.name)
    _reload(corral_dir)


def schema(args: Namespace) -> None:
    """The subject catalogue, built from the services' request models (no NATS needed).

    It runs as its own program (``python -m services.catalog``), beside services/all.py:
    building it imports every service, which the CLI's process must not
    (tests/unit/test_imports.py), and the CLI stays fast for everything else.
    """
    import sys

    argv = [sys.executable, "-m", "services.catalog"] + (["--markdown"] if args.markdown
                                                          else [])
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def events(args: Namespace) -> None:
    """Print events as JSON lines (with their id and stream sequence) through
    shared.client, as an integration would read them; replays with --since-seq/--since."""
    import asyncio
    import contextlib
    import json
    from datetime import datetime, timezone

    from shared.client import Client

    from ..client import UsageError

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--since {args.since!r}: use an ISO 8601 time such as "
                             "2026-01-02T03:04:05Z") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    creds = args.credentials or _dir(args) / "credentials" / "admin.json"
    url = args.url or os.environ.get("CORRAL_NATS_URL") or "nats://127.0.0.1:4222"

    async def run() -> None:
        async with await Client.connect(creds, url, allow_reconnect=False) as c:
            seen = 0
            # closed before the client: left open, its subscription held the client's
            # drain for nats-py's drain timeout (30 s) after --count was reached
            async with contextlib.aclosing(c.events(
                    types=args.type or None, project=args.project,
                    since_seq=args.since_seq, since_time=since)) as stream:
                async for ev in stream:
                    print(json.dumps({"id": ev.id, "seq": ev.seq, "type": ev.type,
                                      "project": ev.project, "timestamp": ev.timestamp,
                                      "metadata": ev.metadata}), flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        return

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


def register(sub: Any) -> None:
    bus = group(sub, "bus")
    p = command(bus, "events", events, "Print the bus's events as JSON lines, live or "
                "replayed from the CORRAL_EVENTS stream.",
                description="Through the NATS API (shared.client) with a credentials file "
                "(default $CORRAL_DIR/credentials/admin.json): each line has the event's "
                "id (Nats-Msg-Id), its stream sequence and LXD's event.")
    p.add_argument("--credentials", type=Path, default=None)
    p.add_argument("--url", default=None, help="NATS URL (default $CORRAL_NATS_URL)")
    p.add_argument("--type", action="append", help="lifecycle, operation or logging "
                   "(repeatable)")
    p.add_argument("--project", default=None)
    p.add_argument("--since-seq", type=int, default=None,
                   help="replay from this stream sequence")
    p.add_argument("--since", default=None, help="replay from this time (ISO 8601)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--dir", type=Path, default=None,
                   help="the Corral directory (default $CORRAL_DIR, else ./var)")
    p = command(bus, "schema", schema, "Print the NATS API: every subject, its request and "
                "reply as JSON Schema, the roles allowed and an example.",
                description="Built from the services' request models without connecting to "
                "NATS; docs/nats-api.md is its --markdown form.")
    p.add_argument("--markdown", action="store_true", help="markdown instead of JSON")
    creds = group(bus, "credentials", "NATS credentials for integrations (root only).")
    common = {"type": Path, "default": None,
              "help": "the Corral directory (default $CORRAL_DIR, else ./var)"}
    p = command(creds, "create", create, "Write a credentials file for an integration.",
                description="Write $CORRAL_DIR/credentials/NAME.json (mode 0600) for a NATS "
                "client. Roles: events (subscribe to events, replay the CORRAL_EVENTS "
                "stream), reader (also list/show requests), operator (every request, never "
                "exec/console streams).")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--project", default=None,
                   help="recorded in the credential (projects are not enforced yet)")
    p.add_argument("--dir", **common)
    p = command(creds, "list", list_, "List integration credentials.")
    p.add_argument("--dir", **common)
    add_format(p)
    p = command(creds, "revoke", revoke, "Revoke a credential; its connections are closed.")
    p.add_argument("name")
    p.add_argument("--dir", **common)
