"""PUT/PATCH, rename and delete of an instance.

Why limits go to the driver first: ``apply_limits_live`` validates and applies all changed
``limits.*`` or none of them, so a bad value (or a memory limit below current usage) is an
error that leaves both the cgroups and the KV record as they were. A limit the driver
cannot change on a running instance (its ``capabilities.live_limits``) is refused with a
400 that says to stop it first, never stored to apply "later" unnoticed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared import faults
from shared.api import check_etag, string_map
from shared.errors import BadRequest, Conflict, NotFound
from shared.state import key, mutate

from . import (
    disks,
    hotplug,
    limits,
    live_changes,
    project_checks,
    reconcile,
    restore,
    snapshot_ops,
    validate,
)
from .context import Context
from .create import expand_profiles
from .drivers.base import Capabilities
from .drivers.router import type_of
from .lifecycle import apply_nic_limits, host_status
from .names import host_name, host_of
from .records import expand, nic_names, record_etag


def _volatile(cfg: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in cfg.items() if k.startswith("volatile.")}


async def update(ctx: Context, project: str, name: str, body: dict[str, Any],
                 etag: str | None, patch: bool) -> dict[str, Any]:
    k = key(project, name)
    rec, rev = await ctx.instances.require(k, "Instance")
    check_etag(etag, record_etag(rec))
    if not patch and body.get("restore"):  # LXD: a restore, never an update
        return await restore.restore(ctx, rec, body)
    user_cfg = {x: v for x, v in rec["config"].items() if not x.startswith("volatile.")}
    if patch:
        cfg = validate.check_config({**user_cfg, **string_map("config", body["config"])}) \
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
    # LXD's PUT sets ephemeral (absent: false, Go's zero value); PATCH keeps it if absent.
    ephemeral = validate.check_bool("ephemeral", body.get(
        "ephemeral", rec.get("ephemeral", False) if patch else False))
    new = await apply(ctx, rec, rev, cfg, devices, profiles, desc)
    if ephemeral != bool(new.get("ephemeral")):
        new = await mutate(ctx.instances, k, lambda r: {**r, "ephemeral": ephemeral})
    return new


def check_live(capabilities: Capabilities, status: str, changed: dict[str, str]) -> None:
    """400 for a limit the driver cannot change while the instance runs."""
    if status not in ("Running", "Frozen"):
        return
    stuck = sorted(set(changed) - capabilities.live_limits)
    if stuck:
        kind = capabilities.instance_type.replace("-", " ")
        raise BadRequest(f"{', '.join(stuck)} cannot change while this {kind} runs: stop "
                         "it, set the new value, start it again")


async def plan(ctx: Context, rec: dict[str, Any], cfg: dict[str, str],
               devices: dict[str, dict[str, str]], profiles: list[str],
               override: dict[str, Any] | None = None
               ) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The expanded config and devices ``rec`` would get, checked as a whole (400 for
    anything that could not be applied); ``override`` stands in for the stored profile
    of the same name (a profile change is checked against every instance using it
    before it is saved)."""
    docs = await expand_profiles(ctx, rec["project"], profiles)
    if override is not None:
        docs = [override if d["name"] == override["name"] else d for d in docs]
    pcfg, pdevs = expand(docs, cfg, devices)
    project_checks.updating(ctx, rec, pcfg, pdevs)  # LXD's messages before Corral's own
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    validate.root_device(pdevs)
    if type_of(rec) != "container" or pcfg.get("raw.lxc", "") != rec[
            "expanded_config"].get("raw.lxc", ""):  # LXC's verdict only when raw.lxc changes
        await validate.check_for_type(type_of(rec), pcfg)
    if pcfg.get("security.privileged", "false") != rec["expanded_config"].get(
            "security.privileged", "false"):
        raise BadRequest("Changing security.privileged of an existing instance is not "
                         "supported yet: create a new instance instead")
    # Checked here, not only in apply: a profile change is refused before it is saved.
    status = await host_status(ctx, rec)
    await disks.check_changed(ctx, rec, pdevs, status)
    live_changes.check(type_of(rec), status, rec["expanded_devices"], pdevs)
    live_changes.check_config(type_of(rec), status, rec["expanded_config"], pcfg)
    return pcfg, pdevs


async def apply(ctx: Context, rec: dict[str, Any], rev: int,
                cfg: dict[str, str], devices: dict[str, dict[str, str]],
                profiles: list[str], desc: str) -> dict[str, Any]:
    """Re-expand, apply live what can be, store. Also used when a profile changes."""
    pcfg, pdevs = await plan(ctx, rec, cfg, devices, profiles)
    old_cfg, old_devs = rec["expanded_config"], rec["expanded_devices"]
    new = {**rec, "config": cfg, "devices": devices, "profiles": profiles,
           "description": desc, "expanded_config": pcfg, "expanded_devices": pdevs}
    name, host = rec["name"], host_of(rec)
    drv = ctx.drivers.for_instance(rec)
    status = await host_status(ctx, rec)
    changed = {x: pcfg.get(x, "") for x in limits.LIMIT_KEYS if old_cfg.get(x) != pcfg.get(x)}
    check_live(drv.capabilities, status, changed)
    size = live_changes.root_size_change(old_devs, pdevs)
    if size is not None and type_of(rec) == "container" and rec.get("pool"):
        await ctx.remote.volume_quota(rec["project"], rec["pool"], name, size)
    if changed:
        await asyncio.to_thread(drv.apply_limits_live, host, changed)
    mounted = await disks.hotplug(ctx, rec, drv, host, pdevs) \
        if status in ("Running", "Frozen") else None
    try:
        live = await hotplug.apply(ctx, rec, drv, host, old_devs, pdevs, status)
    except BaseException:
        if mounted is not None:
            await disks.unplug_back(ctx, rec, drv, host, pdevs, mounted)
        raise
    new = live.record(new)
    try:
        await asyncio.to_thread(drv.update, host, new["expanded_config"], pdevs, live.nics,
                                mounted)
        if status in ("Running", "Frozen"):
            nics = {d for d in nic_names(pdevs) if d in old_devs and _limits(pdevs[d]) !=
                    _limits(old_devs[d])}
            if nics:
                await apply_nic_limits(ctx, new, only=nics)
        await ctx.instances.update(key(rec["project"], name), new, rev)
        live.finish()  # hot-plug journal: the record now says what the instance has
        if mounted is not None:
            await disks.done(drv, host)
    except BaseException:
        await live.rollback(ctx)
        if mounted is not None:  # the record keeps the old disks: so does the instance
            await disks.unplug_back(ctx, rec, drv, host, pdevs, mounted)
        raise
    return new


def _limits(dev: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in dev.items() if k.startswith("limits.")}


async def rename(ctx: Context, project: str, name: str, body: dict[str, Any]
                 ) -> dict[str, Any]:
    new_name = validate.check_name(body.get("name"))
    if body.get("migration") or body.get("live"):
        raise BadRequest("Migration is not supported by rename")
    k = key(project, name)
    rec, _rev = await ctx.instances.require(k, "Instance")
    drv = ctx.drivers.for_instance(rec)
    if not drv.capabilities.rename:
        raise BadRequest(f"Renaming a {type_of(rec)} is not supported yet")
    if await host_status(ctx, rec) != "Stopped":
        raise BadRequest("Renaming of running instance not allowed")
    nk = key(project, new_name)
    new = {**rec, "name": new_name}
    await ctx.instances.create(nk, new, f"Instance {new_name!r}")
    try:
        if rec.get("volume"):
            new["volume"] = await ctx.remote.volume_rename(project, rec["pool"], name,
                                                           new_name)
        await asyncio.to_thread(drv.rename, host_name(project, name),
                                host_name(project, new_name),
                                Path(new["volume"]) if new.get("volume") else None)
    except BaseException:
        await ctx.instances.delete(nk)
        raise
    await ctx.instances.put(nk, new)
    await snapshot_ops.rename_all(ctx, project, name, new_name)  # volume moved them along
    await ctx.instances.delete(k)
    return new


async def delete(ctx: Context, rec: dict[str, Any]) -> None:
    """Driver definition, root volume, KV record: in that order, so a retry finishes.

    The record says "Deleting" first (the intent, journaled): if the process dies half-way,
    the reconcile at its next start finishes the delete instead of leaving a record whose
    container or volume is already gone.
    """
    name, project = rec["name"], rec["project"]
    drv = ctx.drivers.for_instance(rec)
    before = rec.get("status", "Stopped")
    await mutate(ctx.instances, key(project, name), lambda r: {**r, "status": "Deleting"})
    try:
        await asyncio.to_thread(drv.delete, host_of(rec))
    except NotFound:
        pass
    except Conflict as exc:  # started meanwhile: it is not deleted
        await mutate(ctx.instances, key(project, name), lambda r: {**r, "status": before})
        raise BadRequest("The instance is currently running, stop it first") from exc
    faults.point("delete:after_driver")
    await hotplug.deleted(rec)  # NAT rules of a container stopped from inside

    async def volume() -> None:
        if rec.get("pool"):
            try:
                await ctx.remote.volume_delete(project, rec["pool"], name, type_of(rec))
            except NotFound:
                pass

    # The volume (storage service) and the DHCP leases (network service) are independent
    # and each a bus round trip plus work on its side: done at once, the delete waits for
    # the longer of the two instead of their sum. Both are waited for before a failure is
    # raised, so nothing runs on behind the reply; a lease released before a volume delete
    # that fails costs nothing (the container is gone; the record stays "Deleting" and the
    # next start finishes it).
    done = await asyncio.gather(volume(), reconcile.release_leases(ctx, rec),
                                return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    faults.point("delete:after_volume")
    await snapshot_ops.forget_all(ctx, project, name)  # the volume took its snapshots along
    await ctx.instances.delete(key(project, name))
