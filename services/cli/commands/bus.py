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


def register(sub: Any) -> None:
    bus = group(sub, "bus")
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
