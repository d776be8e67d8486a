"""Each publish or run hook's own bus credential, ``hook-<name>`` (``shared/auth.py``).

Why one per hook rather than the hooks service's user: what a hook may do is then what
nats-server lets that credential do (a run hook is an ``operator``, limited to the hook's
project when it names one; a publish hook may publish only its subject), and revoking
the hook revokes its reach. The files live in ``$CORRAL_DIR`` beside nats-server's
``auth.conf``, so the hooks service runs on the node that holds them (as ``corral bus
credentials`` does); nats-server is told to reload (SIGHUP) after each change.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared import auth
from shared.errors import Conflict, CorralError

from . import rules

PREFIX = "hook-"


def name_of(hook_name: str) -> str:
    return PREFIX + hook_name


def needed(hook: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...]] | None:
    """(role, project, extra publish subjects) of the credential a hook needs, or None."""
    kind = rules.kind(hook)
    if kind == "run":
        return "operator", hook.get("project") or None, ()
    if kind == "publish":
        return "events", None, (hook["publish"]["subject"],)
    return None


def _apply(corral_dir: Path, hook_name: str, spec: tuple[str, str | None, tuple[str, ...]]
           | None) -> bool:
    """Write the registry and files; True when nats-server must reload them."""
    name = name_of(hook_name)
    existing = {i["name"] for i in auth.integrations(corral_dir)}
    if name in existing:
        auth.revoke(corral_dir, name)
    if spec is not None:
        role, project, publish = spec
        auth.create(corral_dir, name, role, project, publish)
    return name in existing or spec is not None


def reload_soon(corral_dir: Path, delay: float = 0.2) -> None:
    """Signal nats-server a moment from now, after our reply has left: a reload drops the
    permission a connection has to answer the requests it holds (seen on 2.10: the reply
    to the very request that made the credential was refused). A run or publish attempt
    before then fails and is retried with the backoff."""
    loop = asyncio.get_running_loop()
    loop.call_later(delay, lambda: loop.run_in_executor(None, auth.reload_server,
                                                        corral_dir))


async def ensure(corral_dir: Path, hook: dict[str, Any]) -> Path | None:
    """Make (or remake) the hook's credential; its file, or None for a webhook."""
    spec = needed(hook)
    try:
        if await asyncio.to_thread(_apply, corral_dir, hook["name"], spec):
            reload_soon(corral_dir)
    except auth.AuthError as exc:
        raise (Conflict(exc.message) if exc.code == 409 else CorralError(exc.message, exc.code)
               ) from None
    return auth.Paths(corral_dir).credentials(name_of(hook["name"])) if spec else None


async def remove(corral_dir: Path, hook_name: str) -> None:
    if await asyncio.to_thread(_apply, corral_dir, hook_name, None):
        reload_soon(corral_dir)


def path(corral_dir: Path, hook_name: str) -> Path:
    return auth.Paths(corral_dir).credentials(name_of(hook_name))


def orphans(corral_dir: Path, hooks: set[str]) -> list[str]:
    """Hook names whose credential outlived its hook (a crash between the two writes)."""
    return [i["name"][len(PREFIX):] for i in auth.integrations(corral_dir)
            if i["name"].startswith(PREFIX) and i["name"][len(PREFIX):] not in hooks]
