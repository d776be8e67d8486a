"""PUT/PATCH, rename and delete of an instance.

Why limits go to the driver first: ``apply_limits_live`` validates and applies all changed
``limits.*`` or none of them, so a bad value (or a memory limit below current usage) is an
error that leaves both the cgroups and the KV record as they were.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shared.api import check_etag
from shared.errors import BadRequest, Conflict, NotFound
from shared.state import key

from . import limits, validate
from .create import expand_profiles
from .lifecycle import apply_nic_limits, host_status
from .records import expand, nic_names, record_etag

if TYPE_CHECKING:
    from .service import InstanceService


def _volatile(cfg: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in cfg.items() if k.startswith("volatile.")}


async def update(svc: "InstanceService", project: str, name: str, body: dict[str, Any],
                 etag: str | None, patch: bool) -> dict[str, Any]:
    k = key(project, name)
    rec, rev = await svc.instances.require(k, "Instance")
    check_etag(etag, record_etag(rec))
    user_cfg = {x: v for x, v in rec["config"].items() if not x.startswith("volatile.")}
    if patch:
        cfg = {**user_cfg, **validate.check_config(body.get("config"))} \
            if "config" in body else user_cfg
        devices = {**rec["devices"], **validate.check_devices(body.get("devices"))} \
            if "devices" in body else rec["devices"]
        profiles = validate.check_profiles(body["profiles"]) if "profiles" in body \
            else rec["profiles"]
        desc = validate.check_description(body.get("description", rec["description"]))
    else:
        cfg = validate.check_config(body.get("config"))
        devices = validate.check_devices(body.get("devices"))
        profiles = validate.check_profiles(body.get("profiles"))
        desc = validate.check_description(body.get("description"))
    cfg = {x: v for x, v in cfg.items() if not x.startswith("volatile.")}
    cfg.update(_volatile(rec["config"]))
    return await apply(svc, rec, rev, cfg, devices, profiles, desc)


async def apply(svc: "InstanceService", rec: dict[str, Any], rev: int,
                cfg: dict[str, str], devices: dict[str, dict[str, str]],
                profiles: list[str], desc: str) -> dict[str, Any]:
    """Re-expand, apply live what can be, store. Also used when a profile changes."""
    pcfg, pdevs = expand(await expand_profiles(svc, rec["project"], profiles), cfg, devices)
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    validate.root_device(pdevs)
    old_cfg, old_devs = rec["expanded_config"], rec["expanded_devices"]
    if pcfg.get("security.privileged", "false") != old_cfg.get("security.privileged",
                                                               "false"):
        raise BadRequest("Changing security.privileged of an existing instance is not "
                         "supported yet: create a new instance instead")
    new = {**rec, "config": cfg, "devices": devices, "profiles": profiles,
           "description": desc, "expanded_config": pcfg, "expanded_devices": pdevs}
    name = rec["name"]
    changed = {x: pcfg.get(x, "") for x in limits.LIMIT_KEYS if old_cfg.get(x) != pcfg.get(x)}
    if changed:
        await asyncio.to_thread(svc.driver.apply_limits_live, name, changed)
    await asyncio.to_thread(svc.driver.update, name, pcfg, pdevs)
    status = await asyncio.to_thread(host_status, svc.driver, name)
    if status in ("Running", "Frozen"):
        nics = {d for d in nic_names(pdevs) if d in old_devs and _limits(pdevs[d]) !=
                _limits(old_devs[d])}
        if nics:
            await apply_nic_limits(svc, new, only=nics)
    await svc.instances.update(key(rec["project"], name), new, rev)
    return new


def _limits(dev: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in dev.items() if k.startswith("limits.")}


async def rename(svc: "InstanceService", project: str, name: str, body: dict[str, Any]
                 ) -> dict[str, Any]:
    new_name = validate.check_name(body.get("name"))
    if body.get("migration") or body.get("live"):
        raise BadRequest("Migration is not supported by rename")
    k = key(project, name)
    rec, _rev = await svc.instances.require(k, "Instance")
    if rec.get("type") == "virtual-machine":
        raise BadRequest("Renaming virtual machines is not supported yet")
    if await asyncio.to_thread(host_status, svc.driver, name) != "Stopped":
        raise BadRequest("Renaming of running instance not allowed")
    nk = key(project, new_name)
    new = {**rec, "name": new_name}
    await svc.instances.create(nk, new, f"Instance {new_name!r}")
    try:
        if rec.get("volume"):
            new["volume"] = await svc.remote.volume_rename(project, rec["pool"], name,
                                                           new_name)
        await asyncio.to_thread(svc.driver.rename, name, new_name,
                                f"{new['volume']}/rootfs" if new.get("volume") else None)
    except BaseException:
        await svc.instances.delete(nk)
        raise
    await svc.instances.put(nk, new)
    await svc.instances.delete(k)
    return new


async def delete(svc: "InstanceService", rec: dict[str, Any]) -> None:
    """Driver definition, root volume, KV record: in that order, so a retry finishes."""
    name, project = rec["name"], rec["project"]
    try:
        await asyncio.to_thread(svc.driver.delete, name)
    except NotFound:
        pass
    except Conflict as exc:
        raise BadRequest("The instance is currently running, stop it first") from exc
    if rec.get("pool"):
        try:
            await svc.remote.volume_delete(project, rec["pool"], name,
                                           rec.get("type", "container"))
        except NotFound:
            pass
    await svc.instances.delete(key(project, name))
