"""Start, stop, restart, freeze, unfreeze: LXD's ``PUT /1.0/instances/<n>/state``.

Why start re-resolves NICs: the network may have been restarted or the devices edited
while the instance was stopped; asking ``nic_config`` again (with the stored MAC and veth
name, so both stay stable) gives current LXC lines and starts the bridge if needed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lxc

from shared.errors import BadRequest
from shared.messages.instance import StatePutRequest
from shared.models import lxd_time
from shared.state import key, mutate

from . import image_templates
from .create import nic_setup, with_config
from .drivers.lxc import _STATUS
from .idmap import IdMap
from .records import nic_names

if TYPE_CHECKING:
    from .service import InstanceService

# LXD waits forever for a clean shutdown when no timeout is given; we cap it.
DEFAULT_STOP_TIMEOUT = 30.0
EVENTS = {"start": "instance-started", "restart": "instance-restarted",
          "freeze": "instance-paused", "unfreeze": "instance-resumed"}
DESCRIPTIONS = {"start": "Starting instance", "stop": "Stopping instance",
                "restart": "Restarting instance", "freeze": "Freezing instance",
                "unfreeze": "Unfreezing instance"}


def host_status(driver: Any, name: str) -> str:
    """Running/Stopped/Frozen from LXC's monitor or libvirt (no process is spawned)."""
    if hasattr(driver, "host_status"):
        return driver.host_status(name)
    c = lxc.Container(name, str(driver.lxcpath))
    if not c.defined:
        return "Stopped"
    return _STATUS.get(c.state, ("Error", 112))[0]


def check_action(status: str, action: str) -> None:
    if action == "start" and status in ("Running", "Frozen"):
        raise BadRequest("The instance is already running")
    if action in ("stop", "restart", "freeze") and status == "Stopped":
        raise BadRequest("The instance is already stopped" if action == "stop"
                         else "The instance isn't running")
    if action == "freeze" and status == "Frozen":
        raise BadRequest("The instance is already frozen")
    if action == "unfreeze" and status != "Frozen":
        raise BadRequest("The instance is not frozen")


def root_owner(driver: Any, name: str) -> tuple[int, int]:
    """Host ids of the container's root in its files (non-zero only on a shifted rootfs)."""
    data = getattr(driver, "lxc", driver)._load(name)
    if data.get("idmap") and data.get("shifted"):
        m = IdMap.from_json(data["idmap"])
        return m.uid_to_host(0), m.gid_to_host(0)
    return 0, 0


async def _save(svc: "InstanceService", rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return await mutate(svc.instances, key(rec["project"], rec["name"]),
                        lambda r: {**r, **fields, "config": {**r["config"],
                                                             **fields.get("config", {})},
                                   "expanded_config": {**r["expanded_config"],
                                                       **fields.get("expanded_config", {})}})


async def start(svc: "InstanceService", rec: dict[str, Any]) -> dict[str, Any]:
    name = rec["name"]
    lines, vol = await nic_setup(svc, rec)
    rec = with_config(rec, {**vol, "volatile.last_state.power": "RUNNING"})
    await asyncio.to_thread(svc.driver.update, name, rec["expanded_config"],
                            rec["expanded_devices"], lines)
    if rec.get("volume") and rec.get("type", "container") == "container":
        uid, gid = await asyncio.to_thread(root_owner, svc.driver, name)
        await asyncio.to_thread(image_templates.apply, Path(rec["volume"]), "start", rec,
                                uid, gid)
    await asyncio.to_thread(svc.driver.start, name)
    await apply_nic_limits(svc, rec)
    changed = {k: v for k, v in rec["config"].items() if k.startswith("volatile.")}
    return await _save(svc, rec, status="Running", last_used_at=lxd_time(),
                       config=changed, expanded_config=changed)


async def apply_nic_limits(svc: "InstanceService", rec: dict[str, Any],
                           only: set[str] | None = None) -> None:
    """Shape the host veths of NICs that set limits (or ``only`` those named, even unset)."""
    devs, cfg = rec["expanded_devices"], rec["expanded_config"]
    for dev in nic_names(devs):
        host = cfg.get(f"volatile.{dev}.host_name")
        limited = any(k.startswith("limits.") for k in devs[dev])
        if host and ((only is None and limited) or (only is not None and dev in only)):
            await svc.remote.nic_limits(rec["project"], host, devs[dev])


async def stop(svc: "InstanceService", rec: dict[str, Any], timeout: float,
               force: bool) -> dict[str, Any]:
    t = DEFAULT_STOP_TIMEOUT if timeout < 0 else timeout
    await asyncio.to_thread(svc.driver.stop, rec["name"], t, force)
    power = {"volatile.last_state.power": "STOPPED"}
    return await _save(svc, rec, status="Stopped", config=power, expanded_config=power)


async def change(svc: "InstanceService", rec: dict[str, Any], req: StatePutRequest) -> str:
    """Do ``req.action``; returns the lifecycle event name. Runs inside the operation."""
    status = await asyncio.to_thread(host_status, svc.driver, rec["name"])
    check_action(status, req.action)
    if req.action == "start":
        await start(svc, rec)
    elif req.action == "stop":
        await stop(svc, rec, req.timeout, req.force)
        return "instance-stopped" if req.force else "instance-shutdown"
    elif req.action == "restart":
        rec = await stop(svc, rec, req.timeout, req.force)
        await start(svc, rec)
    elif req.action == "freeze":
        await asyncio.to_thread(svc.driver.freeze, rec["name"])
    else:
        await asyncio.to_thread(svc.driver.unfreeze, rec["name"])
    return EVENTS[req.action]
