"""Start, stop, restart, freeze, unfreeze: LXD's ``PUT /1.0/instances/<n>/state``.

Why start re-resolves NICs: the network may have been restarted or the devices edited
while the instance was stopped; asking ``nic_config`` again (with the stored MAC and host
name, so both stay stable) gives the current NICs and starts the bridge if needed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared.errors import BadRequest
from shared.messages.instance import StatePutRequest
from shared.models import lxd_time
from shared.state import key, mutate

from . import disks, hotplug, image_templates, workers
from .context import Context
from .create import nic_setup, take_defined, with_config
from .names import host_of
from .records import nic_names

# LXD waits forever for a clean shutdown when no timeout is given; we cap it.
DEFAULT_STOP_TIMEOUT = 30.0
EVENTS = {"start": "instance-started", "restart": "instance-restarted",
          "freeze": "instance-paused", "unfreeze": "instance-resumed"}
DESCRIPTIONS = {"start": "Starting instance", "stop": "Stopping instance",
                "restart": "Restarting instance", "freeze": "Freezing instance",
                "unfreeze": "Unfreezing instance"}


def check_action(status: str, action: str, can_freeze: bool = True) -> None:
    """LXD's answers to a state change that cannot happen from ``status`` (400)."""
    if action in ("freeze", "unfreeze") and not can_freeze:
        raise BadRequest("This instance's driver cannot pause it: freeze and unfreeze "
                         "are not supported for its type")
    if action == "start" and status in ("Running", "Frozen"):
        raise BadRequest("The instance is already running")
    if action in ("stop", "restart", "freeze") and status == "Stopped":
        raise BadRequest("The instance is already stopped" if action == "stop"
                         else "The instance isn't running")
    if action == "freeze" and status == "Frozen":
        raise BadRequest("The instance is already frozen")
    if action == "unfreeze" and status != "Frozen":
        raise BadRequest("The instance is not frozen")


async def host_status(ctx: Context, rec: dict[str, Any]) -> str:
    return await asyncio.to_thread(ctx.drivers.host_status, rec)


async def check(ctx: Context, rec: dict[str, Any], action: str) -> None:
    """400 unless ``action`` can happen now (asked of the instance's driver)."""
    drv = ctx.drivers.for_instance(rec)
    check_action(await host_status(ctx, rec), action, drv.capabilities.freeze)


async def _save(ctx: Context, rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return await mutate(ctx.instances, key(rec["project"], rec["name"]),
                        lambda r: {**r, **fields, "config": {**r["config"],
                                                             **fields.get("config", {})},
                                   "expanded_config": {**r["expanded_config"],
                                                       **fields.get("expanded_config", {})}})


async def start(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """Start the instance. Right after its create (``lxc launch``) with the NICs the
    create resolved (``create.take_defined``): not asked of the network service again
    (a bus round trip), and the definition just made is not rewritten unless extra
    disks must be added to it."""
    name = host_of(rec)
    drv = ctx.drivers.for_instance(rec)
    fresh_nics = take_defined(rec)
    if fresh_nics is None:
        nics, vol = await nic_setup(ctx, rec)
    else:
        nics, vol = fresh_nics, {}  # their volatile keys are in the record already
    rec = with_config(rec, {**vol, "volatile.last_state.power": "RUNNING"})
    extra = await disks.resolve(ctx, rec)  # 400 for a missing source, before starting
    await hotplug.check_start(ctx, rec)  # unix sources, NAT addresses: 400 before starting
    if fresh_nics is None or extra:
        await asyncio.to_thread(drv.update, name, rec["expanded_config"],
                                rec["expanded_devices"], nics, extra)
    if rec.get("volume") and drv.capabilities.templates:
        await asyncio.to_thread(_start_templates, drv, name, rec)
    await asyncio.to_thread(drv.start, name)
    try:
        await apply_nic_limits(ctx, rec)
        await hotplug.started(ctx, rec)  # unix devices, proxy forwarders
    except BaseException:
        await workers.STOPS.run(drv.stop, name, 0, True)
        await hotplug.stopped(ctx, rec)
        raise
    changed = {k: v for k, v in rec["config"].items() if k.startswith("volatile.")}
    return await _save(ctx, rec, status="Running", last_used_at=lxd_time(),
                       config=changed, expanded_config=changed)


def _start_templates(drv: Any, name: str, rec: dict[str, Any]) -> None:
    """The image's "start" templates (as LXD re-renders them at each start), in one
    thread hop; the root's owner is only read when there is a template to write."""
    volume = Path(rec["volume"])
    if image_templates.has(volume, "start"):
        uid, gid = drv.root_owner(name)
        image_templates.apply(volume, "start", rec, uid, gid)


async def apply_nic_limits(ctx: Context, rec: dict[str, Any],
                           only: set[str] | None = None) -> None:
    """Shape the host ends of NICs that set limits (or ``only`` those named, even unset)."""
    devs, cfg = rec["expanded_devices"], rec["expanded_config"]
    for dev in nic_names(devs):
        host = cfg.get(f"volatile.{dev}.host_name")
        limited = any(k.startswith("limits.") for k in devs[dev])
        if host and ((only is None and limited) or (only is not None and dev in only)):
            await ctx.remote.nic_limits(rec["project"], host, devs[dev])


async def stop(ctx: Context, rec: dict[str, Any], timeout: float,
               force: bool) -> dict[str, Any]:
    t = DEFAULT_STOP_TIMEOUT if timeout < 0 else timeout
    drv = ctx.drivers.for_instance(rec)
    # A clean stop sleeps up to ``t``: on its own threads, never the shared pool's.
    await workers.STOPS.run(drv.stop, host_of(rec), t, force)
    await hotplug.stopped(ctx, rec)  # proxy forwarders
    power = {"volatile.last_state.power": "STOPPED"}
    return await _save(ctx, rec, status="Stopped", config=power, expanded_config=power)


async def change(ctx: Context, rec: dict[str, Any], req: StatePutRequest) -> str:
    """Do ``req.action``; returns the lifecycle event name. Runs inside the operation."""
    await check(ctx, rec, req.action)
    drv = ctx.drivers.for_instance(rec)
    if req.action == "start":
        await start(ctx, rec)
    elif req.action == "stop":
        await stop(ctx, rec, req.timeout, req.force)
        return "instance-stopped" if req.force else "instance-shutdown"
    elif req.action == "restart":
        rec = await stop(ctx, rec, req.timeout, req.force)
        await start(ctx, rec)
    elif req.action == "freeze":
        await asyncio.to_thread(drv.freeze, host_of(rec))
    else:
        await asyncio.to_thread(drv.unfreeze, host_of(rec))
    return EVENTS[req.action]
