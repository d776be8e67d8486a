"""Disk devices other than the root: host paths and custom volumes (LXD's disk device).

Why three steps: :func:`.disk_rules.check_device` is pure (keys, values, absolute paths:
answered at once, for profiles too); :func:`resolve` needs the host and the storage
service (does the source exist, is the volume there, is it in use elsewhere, is it a block
volume) and turns each device into a neutral :class:`DiskMount` the driver renders;
:func:`hotplug` applies a change to a running instance (detach, attach, limits), undoing
what it did when a step fails, so a failed hot-plug leaves the instance and its record as
they were. Everything is checked before anything changes: update's ``plan`` calls
:func:`check_changed`. A hot-plug is journaled in the driver's spec until the record is
stored; :func:`reconcile` resets an instance whose hot-plug a crash interrupted.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared import faults
from shared.errors import BadRequest, CorralError, NotFound
from shared.messages.storage import VolumeGetRequest, VolumePathReply, VolumeRequest

from . import limits
from .disk_rules import LIMIT_KEYS, Device, flag, is_extra_disk, rates
from .drivers.disk_mounts import DiskMount

if TYPE_CHECKING:
    from .context import Context
    from .drivers.base import InstanceDriver

BLOCK_IMAGE = "root.img"  # a block custom volume's file inside its volume directory
VOLUME_TIMEOUT = 30.0


def _uses_volume(dev: Device, pool: str, volume: str) -> bool:
    return is_extra_disk(dev) and dev.get("pool") == pool and \
        dev.get("source", "").removeprefix("custom/") == volume


async def _custom_volume(ctx: "Context", rec: Mapping[str, Any], name: str,
                         dev: Device, running: bool) -> tuple[str, str, bool]:
    """(host path, kind, unmapped) of the custom volume a device names; 404 when it does
    not exist; 400 when ``running`` (this instance runs or starts) and a running instance
    elsewhere uses it (a stopped instance may hold it: its start is refused while the
    other runs). A volume with ``security.shared=true`` may be shared (LXD after 5.0;
    the storage service does not take that key yet)."""
    pool, vol = dev["pool"], dev["source"].removeprefix("custom/")
    project = rec.get("project", "default")
    if ctx.projects is not None:
        project = ctx.projects.effective(project, "volumes")
    bus, node = ctx.remote.bus, ctx.remote.node
    try:
        reply = await bus.request("storage", "volume_get", VolumeGetRequest(
            project=project, pool=pool, kind="custom", name=vol), timeout=VOLUME_TIMEOUT)
    except NotFound:
        raise NotFound(f"Device {name!r}: storage volume {vol!r} of type custom not found "
                       f"in pool {pool!r}") from None
    meta = reply.metadata or {}
    shared = limits.parse_bool("security.shared",
                               (meta.get("config") or {}).get("security.shared", "false"))
    if running and not shared:
        for other in ctx.instances.cached():
            if other["name"] == rec["name"] and other.get("project") == rec.get("project"):
                continue
            if other.get("status") not in ("Running", "Frozen"):
                continue
            users = [d for d in other.get("expanded_devices", {}).values()
                     if _uses_volume(d, pool, vol)]
            if users and (ctx.projects is None or ctx.projects.effective(
                    other.get("project", "default"), "volumes") == project):
                raise BadRequest(f"Device {name!r}: storage volume {vol!r} in pool {pool!r} "
                                 f"is already in use by running instance "
                                 f"{other['name']!r}: detach it there or stop that "
                                 "instance first")
    reply = await bus.request("storage", "volume_path", VolumeRequest(
        project=project, pool=pool, kind="custom", name=vol), node=node,
        timeout=VOLUME_TIMEOUT)
    path = VolumePathReply.model_validate(reply.metadata)
    if not path.exists:
        raise NotFound(f"Device {name!r}: storage volume {vol!r} of type custom not found "
                       f"in pool {pool!r}")
    block = meta.get("content_type") == "block" or \
        os.path.isfile(os.path.join(path.path, BLOCK_IMAGE))
    # security.unmapped: the volume's files are used with host ids, not mapped (LXD).
    unmapped = limits.parse_bool("security.unmapped", (meta.get("config") or {}).get(
        "security.unmapped", "false"))
    if block:
        return os.path.join(path.path, BLOCK_IMAGE), "block", unmapped
    return path.path, "dir", unmapped


def _restricted_parents(ctx: "Context", rec: Mapping[str, Any]) -> list[str] | None:
    """The project's ``restricted.devices.disk.paths`` when it restricts host paths
    (None: no restriction; project_limits checked the source string already)."""
    if ctx.projects is None:
        return None
    cfg = ctx.projects.require(rec.get("project", "default")).get("config", {})
    if not limits.parse_bool("restricted", cfg.get("restricted", "false") or "false"):
        return None
    paths = [p.strip() for p in cfg.get("restricted.devices.disk.paths", "").split(",")]
    return [p for p in paths if p] or None


def _check_inside(name: str, source: str, parents: list[str]) -> None:
    """400 when ``source`` resolves (symlinks followed) outside every allowed parent: a
    link below an allowed directory must not reach the rest of the host."""
    real = os.path.realpath(source)
    for parent in parents:
        top = os.path.realpath(parent)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return
    raise BadRequest(f"Source path {source!r} of disk {name!r} resolves outside of the "
                     "project's restricted.devices.disk.paths")


def _host_kind(name: str, dev: Device) -> str | None:
    """"dir"/"file"/"block" of a host source; None when missing and optional."""
    source = dev["source"]
    try:
        st = os.stat(source)
    except FileNotFoundError:
        if flag(name, dev, "optional") or dev.get("required", "") in ("false", "0", "no"):
            return None
        raise BadRequest(f"Missing source path {source!r} for disk {name!r}") from None
    except OSError as exc:
        raise BadRequest(f"Cannot use source path {source!r} for disk {name!r}: "
                         f"{exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISBLK(st.st_mode):
        return "block"
    raise BadRequest(f"Source path {source!r} for disk {name!r} is neither a directory, a "
                     "file nor a block device")


async def resolve_one(ctx: "Context", rec: Mapping[str, Any], name: str, dev: Device,
                      running: bool = True) -> DiskMount | None:
    """The device as this host sees it (None: an optional source that is missing)."""
    itype = rec.get("type") or "container"
    container = itype == "container"
    privileged = limits.parse_bool("security.privileged", rec.get(
        "expanded_config", {}).get("security.privileged", "false"))
    volume = ""
    if dev.get("pool"):
        source, kind, unmapped = await _custom_volume(ctx, rec, name, dev, running)
        volume = f"{dev['pool']}/{dev['source'].removeprefix('custom/')}"
        if kind == "block" and container:
            raise BadRequest(f"Device {name!r}: custom block volumes cannot be used on "
                             "containers")
        if kind == "block" and dev.get("path"):
            raise BadRequest(f"Device {name!r}: custom block volumes cannot have a path "
                             "defined")
        if kind == "dir" and not dev.get("path"):
            raise BadRequest(f"Device {name!r}: custom filesystem volumes require a path "
                             "to be defined")
        idmap = not privileged and not unmapped
    else:
        found = await asyncio.to_thread(_host_kind, name, dev)
        if found is None:
            return None
        kind, source, idmap = found, dev["source"], flag(name, dev, "shift")
        parents = _restricted_parents(ctx, rec)
        if parents is not None:
            if idmap:
                raise BadRequest(f'Device {name!r}: the "shift" property cannot be used '
                                 "with a restricted source path")
            _check_inside(name, source, parents)
            source = os.path.realpath(source)  # mount what was checked
        if container and kind == "block":
            raise BadRequest(f"Device {name!r}: block device sources ({source}) cannot be "
                             "mounted in containers yet; use a directory or file")
    if container and not dev.get("path"):
        raise BadRequest(f'Device {name!r}: disk devices of containers need a "path" '
                         "(the mount point inside the container)")
    if flag(name, dev, "recursive") and kind != "dir":
        raise BadRequest(f"Device {name!r}: the recursive option is only supported for "
                         "additional bind-mounted paths (directories)")
    if not container and kind == "dir":
        raise BadRequest(f"Device {name!r}: directory disks on virtual machines are not "
                         "supported yet (the guest image has no virtiofs or 9p driver); "
                         "attach a file or a block custom volume instead")
    mount = DiskMount(name=name, source=source, path=dev.get("path", ""), kind=kind,
                      readonly=flag(name, dev, "readonly"),
                      recursive=flag(name, dev, "recursive"),
                      optional=flag(name, dev, "optional"), idmap=idmap, volume=volume,
                      **rates(name, dev))
    if mount.limited():
        await asyncio.to_thread(check_limits_possible, itype, mount)
    return mount


def check_limits_possible(itype: str, mount: DiskMount) -> None:
    """400 with the reason when this host cannot throttle the disk: no blkio (v1) or io
    (v2) controller for containers, or a source on no block device."""
    from .drivers import cgroups, disk_mounts

    if itype == "container":
        v1, v2 = cgroups.hierarchies()
        if "blkio" not in v1:
            ctrl = (v2 / "cgroup.controllers") if v2 else None
            have = ctrl.read_text().split() if ctrl and ctrl.exists() else []
            if "io" not in have:
                raise BadRequest(f"Device {mount.name!r}: disk limits cannot apply on this "
                                 "host: neither the cgroup v1 blkio controller nor the "
                                 "cgroup v2 io controller is available")
        disk_mounts.block_device_of(mount.source)


async def resolve(ctx: "Context", rec: Mapping[str, Any],
                  devices: Mapping[str, Device] | None = None,
                  only: set[str] | None = None, running: bool = True) -> list[DiskMount]:
    """Every extra disk of ``devices`` (default: the record's expanded devices) resolved,
    or only those named in ``only``; ``running``: for an instance that runs or starts
    (volumes in use elsewhere are refused)."""
    devs = rec.get("expanded_devices", {}) if devices is None else devices
    out = []
    for name in sorted(devs):
        dev = devs[name]
        if not is_extra_disk(dev) or (only is not None and name not in only):
            continue
        m = await resolve_one(ctx, rec, name, dev, running)
        if m is not None:
            out.append(m)
    return out


def changed(old: Mapping[str, Device], new: Mapping[str, Device]) -> tuple[set[str], set[str]]:
    """(names removed or changed, names added or changed) among extra disks."""
    a = {n: d for n, d in old.items() if is_extra_disk(d)}
    b = {n: d for n, d in new.items() if is_extra_disk(d)}
    gone = {n for n in a if n not in b or dict(a[n]) != dict(b[n])}
    come = {n for n in b if n not in a or dict(a[n]) != dict(b[n])}
    return gone, come


def _only_limits(a: Device, b: Device) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in LIMIT_KEYS}  # noqa: E731
    return strip(a) == strip(b)


async def check_changed(ctx: "Context", rec: Mapping[str, Any],
                        new: Mapping[str, Device], status: str) -> None:
    """Host checks of the disks added or changed (a missing source, an unknown volume,
    one busy elsewhere when this instance runs...), before anything is stored;
    unchanged disks are not re-checked."""
    _gone, come = changed(rec.get("expanded_devices", {}), new)
    if come:
        await resolve(ctx, rec, new, only=come, running=status in ("Running", "Frozen"))


async def hotplug(ctx: "Context", rec: Mapping[str, Any], drv: "InstanceDriver", host: str,
                  new: Mapping[str, Device], current: list[DiskMount] | None = None
                  ) -> list[DiskMount] | None:
    """Apply the disk changes between the record's devices and ``new`` to the RUNNING
    instance: detach removed or changed disks, attach added or changed ones, set limits.
    All or nothing: on a failure what was done is undone and the error raised. Returns
    the new resolved disk list for the driver's spec (None when nothing changed).
    ``current``: what the instance has now (default: what its driver was last given)."""
    old = rec.get("expanded_devices", {})
    gone, come = changed(old, new)
    if not gone and not come:
        return None
    if not drv.capabilities.hotplug_disks:
        kind = (rec.get("type") or "container").replace("-", " ")
        raise BadRequest(f"Disk devices cannot be added to or removed from a running {kind} "
                         "yet: stop the instance first")
    if current is None:
        current = await asyncio.to_thread(drv.disks_of, host)
    before = {m.name: m for m in current}
    # Unchanged disks stay as they are (their source is not asked again: one that went
    # away must not block another disk's change); added or changed ones are resolved.
    fresh = {m.name: m for m in await resolve(ctx, rec, new, only=come)}
    after = [fresh[n] if n in come else before[n] for n in sorted(new)
             if is_extra_disk(new[n]) and (n in fresh or (n not in come and n in before))]
    after_by = {m.name: m for m in after}
    limits_only = {n for n in gone & come if n in before and n in after_by and
                   _only_limits(old[n], new[n])}
    detached: list[DiskMount] = []
    attached: list[DiskMount] = []
    # The journal, before the instance changes: a crash from here until the record is
    # stored leaves the entry, and reconcile() resets the disks to the record's.
    await asyncio.to_thread(drv.disks_intent, host, [*current, *after])
    try:
        for n in sorted(gone - limits_only):
            if n in before:
                await asyncio.to_thread(drv.disk_detach, host, before[n])
                detached.append(before[n])
        for n in sorted(come - limits_only):
            if n in after_by:
                await asyncio.to_thread(drv.disk_attach, host, after_by[n])
                attached.append(after_by[n])
                faults.point("hotplug:after_attach")
        if any(m.limited() for m in [*after, *before.values()]):
            await asyncio.to_thread(drv.disk_limits, host, after)
    except BaseException:
        undone = [await _quietly(ctx, drv.disk_detach, host, m) for m in reversed(attached)]
        undone += [await _quietly(ctx, drv.disk_attach, host, m) for m in reversed(detached)]
        if all(undone):  # else left journaled: the next start resets the disks
            await asyncio.to_thread(drv.disks_intent, host, None)
        raise
    return after


async def done(drv: "InstanceDriver", host: str) -> None:
    """The hot-plugged change is recorded: drop the journal entry."""
    await asyncio.to_thread(drv.disks_intent, host, None)


async def reconcile(ctx: "Context", rec: Mapping[str, Any], drv: "InstanceDriver",
                    host: str) -> None:
    """At the service's start, for a running instance whose hot-plug was interrupted (a
    journal entry is left): unplug every disk it may have got, plug the record's."""
    try:
        pending = await asyncio.to_thread(drv.disks_pending, host)
    except CorralError:  # no spec to read (a half-made instance): nothing was journaled
        return
    if pending is None:
        return
    ctx.log.warning("resetting the disks of an instance whose hot-plug was interrupted",
                    instance=host)
    try:
        known = {(m.name, m.path): m for m in
                 [*pending, *await asyncio.to_thread(drv.disks_of, host)]}
        for m in sorted(known.values(), key=lambda m: m.path.count("/"), reverse=True):
            await asyncio.to_thread(drv.disk_detach, host, m)
        wanted = await resolve(ctx, rec)
        for m in wanted:
            await asyncio.to_thread(drv.disk_attach, host, m)
        await asyncio.to_thread(drv.disk_limits, host, wanted)
        await asyncio.to_thread(drv.update, host, dict(rec["expanded_config"]),
                                dict(rec["expanded_devices"]), None, wanted)
        await done(drv, host)
    except CorralError as exc:  # left journaled: tried again at the next start
        ctx.log.warning("the disks of an interrupted hot-plug could not be reset",
                        instance=host, error=exc.message)


async def unplug_back(ctx: "Context", rec: Mapping[str, Any], drv: "InstanceDriver",
                      host: str, new: Mapping[str, Device], mounted: list[DiskMount]
                      ) -> None:
    """Undo a hot-plug whose update failed afterwards (the record was not stored): the
    instance gets the record's disks back (best effort: the error that failed the update
    is the one the caller reports)."""
    try:
        back = await hotplug(ctx, {**rec, "expanded_devices": new}, drv, host,
                             rec.get("expanded_devices", {}), current=mounted)
        await asyncio.to_thread(drv.update, host, rec["expanded_config"],
                                rec["expanded_devices"], None, back)
        await done(drv, host)
    except CorralError as exc:
        ctx.log.warning("undoing a disk hot-plug failed", instance=host, error=str(exc))


async def _quietly(ctx: "Context", fn: Any, host: str, m: DiskMount) -> bool:
    try:
        await asyncio.to_thread(fn, host, m)
        return True
    except CorralError as exc:
        ctx.log.warning("undoing a disk hot-plug failed", instance=host, device=m.name,
                        error=str(exc))
        return False
