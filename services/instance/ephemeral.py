"""Ephemeral instances (``lxc launch --ephemeral``) are deleted when they stop, as in LXD.

Three ways an instance stops, one rule:
- through the API (``lxc stop``): :func:`lifecycle.change` deletes it right after the stop,
  inside the same operation (a restart is not a stop: it keeps the instance);
- from inside (``poweroff``, init exiting): nothing calls the service, so a watcher looks
  every :data:`POLL` seconds at the ephemeral instances it last started;
- while the service was down: the same look runs once at start, before any request.
"It stopped without us" is read from the record: ``volatile.last_state.power`` stays
``RUNNING`` from the start until a stop through the API records ``STOPPED``, whatever the
reconcile did to ``status``; and the host must say the instance is stopped. An ephemeral
instance that was created and never started (``lxc init --ephemeral``) is left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from shared.state import key

from . import update
from .context import Context

POLL = 1.0  # seconds between looks (a list of the host's containers costs microseconds)

Locker = Callable[[str, str], asyncio.Lock]
Deleted = Callable[[dict[str, Any]], Awaitable[None]]


def is_ephemeral(rec: dict[str, Any]) -> bool:
    return bool(rec.get("ephemeral"))


def left_running(rec: dict[str, Any]) -> bool:
    """Ephemeral and last started by us, not stopped through the API since."""
    return (is_ephemeral(rec) and rec.get("status") not in ("Creating", "Deleting")
            and (rec.get("config") or {}).get("volatile.last_state.power") == "RUNNING")


async def sweep(ctx: Context, lock: Locker, deleted: Deleted) -> list[str]:
    """Delete every ephemeral instance that stopped without the API; their names."""
    gone = []
    for rec in [r for r in ctx.local() if left_running(r)]:
        if await asyncio.to_thread(ctx.drivers.host_status, rec) != "Stopped":
            continue
        async with lock(rec["project"], rec["name"]):
            found = await ctx.instances.get(key(rec["project"], rec["name"]))
            if found is None or not left_running(found[0]):
                continue  # deleted, restarted or stopped through the API meanwhile
            cur = found[0]
            if await asyncio.to_thread(ctx.drivers.host_status, cur) != "Stopped":
                continue
            ctx.log.info("deleting an ephemeral instance that stopped", instance=cur["name"],
                         project=cur["project"])
            await update.delete(ctx, cur)
        gone.append(cur["name"])
        await deleted(cur)
    return gone


async def watch(ctx: Context, lock: Locker, deleted: Deleted) -> None:
    """Sweep now (what stopped while the service was down), then every :data:`POLL`
    seconds until cancelled; a failed sweep is logged and the next one tries again (the
    storage service may be restarting)."""
    while True:
        try:
            await sweep(ctx, lock, deleted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ctx.log.warning("ephemeral sweep failed", error=str(exc))
        await asyncio.sleep(POLL)


async def after_stop(ctx: Context, rec: dict[str, Any]) -> bool:
    """A stop through the API finished (under the instance's lock): delete the instance
    if it is ephemeral. True when it was deleted."""
    if not is_ephemeral(rec):
        return False
    found = await ctx.instances.get(key(rec["project"], rec["name"]))
    if found is None:
        return False
    await update.delete(ctx, found[0])
    return True
