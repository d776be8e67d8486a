"""Copying an instance: ``POST /1.0/instances`` with ``source.type: copy`` (``lxc copy``).

Shaped like a create (LXD's createFromCopy and instanceCreateAsCopy): the checks and the
reservation of the target's record ("Creating", the crash journal) answer at once; the
volume copy, the snapshot records, the NICs, the ``copy`` templates and the driver's
definition run as the operation and are undone whole when anything fails. The source
may run (a btrfs snapshot or a file copy of a live root is what LXD does too).

What the copy takes (as LXD): the source's local config and devices under the request's
overrides, no ``volatile.*`` but ``volatile.base_image`` (so new MACs and host names come
from the target's own NIC setup, and a fresh ``volatile.uuid``), the snapshots unless
``instance_only``; from a snapshot ``c1/s0``, that snapshot's config and content and no
snapshots. ``refresh`` on an existing target syncs its snapshots and content instead.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import faults
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages.storage import (
    VolumeCopyRequest,
    VolumePathReply,
    VolumeSnapshotRequest,
)
from shared.state import key, mutate

from . import project_checks, records, snapshots, validate
from .context import Context
from .create import (
    Undo,
    define,
    expand_profiles,
    nic_setup,
    pick_name,
    raise_duplicate,
    root_size,
    undo_all,
    with_config,
)
from .drivers.router import TYPES, type_of
from .lifecycle import host_status
from .records import expand

# A copy of a large volume between pools (a file copy or btrfs send) takes a while; the
# storage process is watched meanwhile (Remote.watched), so its death ends the wait early.
COPY_TIMEOUT = 1800.0
QUICK_TIMEOUT = 30.0
# Volatile keys a copy keeps (LXD's InstanceIncludeWhenCopying for a local copy).
KEPT_VOLATILE = ("volatile.base_image",)


@dataclass
class CopyPlan:
    """What the operation copies: decided by :func:`prepare`, done by :func:`build`."""

    source: dict[str, Any]  # the source instance's record
    snapshot: str | None = None  # copy from this snapshot of it
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # records to copy along
    refresh: bool = False  # the target exists: bring it up to date
    drop: list[dict[str, Any]] = field(default_factory=list)  # target snapshots to delete


def split_source(value: Any) -> tuple[str, str | None]:
    """``"c1"`` -> ("c1", None); ``"c1/snap0"`` -> ("c1", "snap0"); 400 otherwise."""
    if not isinstance(value, str) or not value:
        raise BadRequest("Must specify a source instance (source.source)")
    parent, _, snap = value.partition("/")
    if not parent or (_ and not snap) or "/" in snap:
        raise BadRequest(f"Invalid copy source {value!r}: expected INSTANCE or "
                         "INSTANCE/SNAPSHOT")
    return parent, snap or None


def _live_snapshots(ctx: Context, project: str, instance: str) -> list[dict[str, Any]]:
    """The instance's whole snapshot records (none being made, removed or renamed)."""
    if ctx.snapshots is None:
        return []
    return snapshots.records(ctx.snapshots, project, instance)


async def find_source(ctx: Context, project: str, value: Any
                      ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The source instance's record and, for ``c1/s0``, the snapshot's record (404s)."""
    parent, snap = split_source(value)
    found = await ctx.instances.get(key(project, parent))
    if found is None or found[0].get("status") in ("Creating", "Deleting"):
        raise NotFound(f"Instance {parent!r} not found")
    if snap is None:
        return found[0], None
    for r in _live_snapshots(ctx, project, parent):
        if r["name"] == snap:
            return found[0], r
    raise NotFound(f"Snapshot {snap!r} of instance {parent!r} not found")


def copied_config(source_config: dict[str, str], overrides: dict[str, str]
                  ) -> dict[str, str]:
    """The source's local config under the request's, without the volatile keys a new
    instance must make for itself (MACs, host names, uuid, idmaps, power state)."""
    cfg = {k: v for k, v in source_config.items()
           if not k.startswith("volatile.") or k in KEPT_VOLATILE}
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if not k.startswith("volatile.") or k in KEPT_VOLATILE}


def compare_snapshots(source: list[dict[str, Any]], target: list[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LXD's CompareSnapshots: (source snapshots to send, target snapshots to delete).

    A target snapshot whose name the source lacks, or whose creation date differs, goes;
    a source snapshot the target lacks (or had differently) is sent."""
    by_name = {r["name"]: r for r in source}
    drop = [t for t in target if t["name"] not in by_name
            or by_name[t["name"]]["created_at"] != t["created_at"]]
    kept = {t["name"] for t in target if t not in drop}
    return [s for s in source if s["name"] not in kept], drop


async def prepare(ctx: Context, body: dict[str, Any], project: str
                  ) -> tuple[dict[str, Any], CopyPlan]:
    """Check the request and reserve the target's record (or, for a refresh, check the
    target). Returns (target record, plan)."""
    project_checks.effective(ctx, project, "images")  # 404 for an unknown project
    source_spec = body.get("source") or {}
    source_project = source_spec.get("project") or project
    if not isinstance(source_project, str):
        raise BadRequest("Invalid source.project: expected a string")
    if source_project != project:
        project_checks.effective(ctx, source_project, "images")
    src, snap = await find_source(ctx, source_project, source_spec.get("source"))
    only = validate.check_bool("source.instance_only",
                               source_spec.get("instance_only", False)) or \
        validate.check_bool("source.container_only", source_spec.get("container_only", False))
    refresh = validate.check_bool("source.refresh", source_spec.get("refresh", False))
    if snap is not None and refresh:
        raise BadRequest("--refresh can only be used with instances, not snapshots")
    kind = body.get("type") or type_of(src)
    if kind not in TYPES:
        raise BadRequest(f"Invalid instance type {kind!r}: use {' or '.join(TYPES)}")
    if kind != type_of(src):
        raise BadRequest("Instance type should not be specified or should match source type")
    await asyncio.to_thread(ctx.drivers.for_type, kind)  # 400 when libvirtd is not up
    plan = CopyPlan(source=src, snapshot=snap["name"] if snap else None)
    if snap is None and not only:
        plan.snapshots = _live_snapshots(ctx, source_project, src["name"])
    async with project_checks.lock(project):
        name = pick_name(ctx, body)
        existing = await ctx.instances.get(key(project, name))
        if existing is not None and refresh:
            return await _prepare_refresh(ctx, existing[0], plan)
        if existing is not None:
            raise_duplicate(name)
        return await _reserve(ctx, body, project, name, kind, snap or src), plan


async def _prepare_refresh(ctx: Context, target: dict[str, Any], plan: CopyPlan
                           ) -> tuple[dict[str, Any], CopyPlan]:
    if target.get("status") in ("Creating", "Deleting"):
        raise Conflict(f"Instance {target['name']!r} is being created or deleted")
    if type_of(target) != type_of(plan.source):
        raise BadRequest("The refresh target is of another instance type than the source")
    if target["project"] == plan.source["project"] and target["name"] == plan.source["name"]:
        raise BadRequest("An instance cannot be refreshed from itself")
    if await host_status(ctx, target) != "Stopped":
        raise BadRequest(f"Instance {target['name']!r} is running: stop it before a refresh")
    plan.refresh = True
    plan.snapshots, plan.drop = compare_snapshots(
        plan.snapshots, _live_snapshots(ctx, target["project"], target["name"]))
    return target, plan


async def _reserve(ctx: Context, body: dict[str, Any], project: str, name: str, kind: str,
                   origin: dict[str, Any]) -> dict[str, Any]:
    """The target's record, reserved as "Creating" (a duplicate racing us is a 409)."""
    overrides = validate.check_config(body.get("config"))
    config = copied_config(origin.get("config") or {}, overrides)
    raw_devices = validate.check_devices(body.get("devices"))
    devices = {**{k: dict(v) for k, v in (origin.get("devices") or {}).items()},
               **raw_devices}
    profiles = validate.check_profiles(body["profiles"]) if body.get("profiles") is not None \
        else list(origin.get("profiles") or [])
    validate.check_description(body.get("description"))
    validate.check_bool("ephemeral", body.get("ephemeral"))
    docs = await expand_profiles(ctx, project, profiles)
    pcfg, pdevs = expand(docs, config, devices)
    project_checks.creating(ctx, project, name, kind, pcfg, pdevs)
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    _root, root_dev = validate.root_device(pdevs)
    await validate.check_for_type(kind, pcfg)
    rec = records.new_record(name, project, body, config, devices, profiles)
    rec.update(type=kind, location=ctx.location,
               architecture=origin.get("architecture") or rec["architecture"],
               expanded_config=pcfg, expanded_devices=pdevs, pool=root_dev["pool"])
    try:
        await ctx.instances.create(key(project, name), rec, f"Instance {name!r}")
    except Conflict:
        raise_duplicate(name)
    return rec


# ---- the operation -----------------------------------------------------------------------


async def _storage(ctx: Context, verb: str, msg: Any, what: str,
                   timeout: float = QUICK_TIMEOUT) -> Any:
    """A node request to this node's storage service (watched when long)."""
    remote = ctx.remote

    def send() -> Any:
        return remote.bus.request("storage", verb, msg, node=remote.node, timeout=timeout)

    if timeout <= QUICK_TIMEOUT:
        return await send()
    return await remote.watched("storage", send, what)


async def volume_copy(ctx: Context, target: dict[str, Any], plan: CopyPlan,
                      snaps: list[str]) -> Path:
    src = plan.source
    req = VolumeCopyRequest(
        project=target["project"], pool=target["pool"], kind=type_of(target),
        name=target["name"], source_project=src["project"], source_pool=src["pool"],
        source_name=src["name"], source_snapshot=plan.snapshot, snapshots=snaps,
        refresh=plan.refresh, request_id=uuid.uuid4().hex)
    reply = await _storage(ctx, "volume_copy", req, f"copying the volume of {src['name']!r}",
                           timeout=COPY_TIMEOUT)
    return Path(VolumePathReply.model_validate(reply.metadata).path)


async def snapshot_delete(ctx: Context, rec: dict[str, Any], snapshot: str) -> None:
    req = VolumeSnapshotRequest(project=rec["project"], pool=rec["pool"], kind=type_of(rec),
                                name=rec["name"], snapshot=snapshot)
    try:
        await _storage(ctx, "volume_snapshot_delete", req, "deleting a snapshot")
    except NotFound:
        pass


def snapshot_record(snap: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """A source snapshot's record made the target's, its root disk on the target's pool
    (as LXD's instanceCreateAsCopy: a root disk from a profile that names another pool
    becomes a local device, so a restore on the target finds its own pool); dates kept:
    a refresh compares them."""
    pool = target["pool"]
    devices = {k: dict(v) for k, v in (snap.get("devices") or {}).items()}
    expanded = {k: dict(v) for k, v in (snap.get("expanded_devices") or {}).items()}
    roots = [n for n, d in expanded.items() if d.get("type") == "disk" and d.get("path") == "/"]
    if len(roots) == 1 and expanded[roots[0]].get("pool") != pool:
        name = roots[0]
        devices[name] = {**devices.get(name, expanded[name]), "pool": pool}
        expanded[name] = {**expanded[name], "pool": pool}
    elif not roots:
        name = next((n for n, d in target["expanded_devices"].items()
                     if d.get("type") == "disk" and d.get("path") == "/"), "root")
        devices[name] = expanded[name] = {"type": "disk", "path": "/", "pool": pool}
    return {**snap, "project": target["project"], "instance": target["name"],
            "devices": devices, "expanded_devices": expanded, "pool": pool}


async def _write_snapshots(ctx: Context, target: dict[str, Any],
                           snaps: list[dict[str, Any]], undo: list[Undo]) -> list[str]:
    """Write the target's snapshot records, journaled ``creating`` until the copy is whole.
    Returns their keys."""
    assert ctx.snapshots is not None or not snaps
    keys = [snapshots.snapshot_key(target["project"], target["name"], s["name"])
            for s in snaps]
    for k in keys:  # undone whether or not its write below got through
        undo.append(lambda k=k: ctx.snapshots.delete(k))
    await asyncio.gather(*(ctx.snapshots.put(k, {**snapshot_record(s, target),
                                                 "creating": True})
                           for k, s in zip(keys, snaps, strict=True)))
    return keys


async def _settle_snapshots(ctx: Context, keys: list[str]) -> None:
    await asyncio.gather(*(mutate(ctx.snapshots, k, lambda r: {
        x: v for x, v in r.items() if x != "creating"}) for k in keys))


async def build(ctx: Context, rec: dict[str, Any], plan: CopyPlan) -> dict[str, Any]:
    """The copy's operation body; returns the target's final record."""
    if plan.refresh:
        return await refresh(ctx, rec, plan)
    project, name, pool = rec["project"], rec["name"], rec["pool"]
    k = key(project, name)
    kind = type_of(rec)
    undo: list[Undo] = []
    try:
        faults.point("copy:after_reserve")
        drv = ctx.drivers.for_type(kind)

        async def drop_volume() -> None:
            try:
                await ctx.remote.volume_delete(project, pool, name, kind)
            except NotFound:
                pass

        undo.append(drop_volume)
        # The NICs (new MACs from the network service) need no volume: asked meanwhile.
        copied, nicked = await asyncio.gather(
            volume_copy(ctx, rec, plan, [s["name"] for s in plan.snapshots]),
            nic_setup(ctx, rec), return_exceptions=True)
        for result in (copied, nicked):
            if isinstance(result, BaseException):
                raise result
        assert isinstance(copied, Path) and isinstance(nicked, tuple)
        path, (nics, vol) = copied, nicked
        faults.point("copy:after_volume")
        size = root_size(rec["expanded_devices"])
        if size and kind == "container":
            await ctx.remote.volume_quota(project, pool, name, size, kind)
        snap_keys = await _write_snapshots(ctx, rec, plan.snapshots, undo)
        faults.point("copy:after_snapshots")
        rec = with_config({**rec, "volume": str(path)},
                          {**vol, "volatile.uuid": str(uuid.uuid4())})
        final = await define(ctx, drv, rec, path, nics, undo, "copy")
        await _settle_snapshots(ctx, snap_keys)
        return final
    except BaseException:
        await undo_all(ctx, undo, k, rec)
        raise


async def refresh(ctx: Context, target: dict[str, Any], plan: CopyPlan) -> dict[str, Any]:
    """``lxc copy --refresh``: drop the target's snapshots the source no longer has (or
    has anew), copy those it lacks, then its content. The target's config stays (the
    client sends it with a PUT afterwards, as LXD's does)."""
    assert ctx.snapshots is not None or not plan.drop
    for snap in plan.drop:
        await snapshot_delete(ctx, target, snap["name"])
        await ctx.snapshots.delete(
            snapshots.snapshot_key(target["project"], target["name"], snap["name"]))
    undo: list[Undo] = []
    try:
        keys = await _write_snapshots(ctx, target, plan.snapshots, undo)
        await volume_copy(ctx, target, plan, [s["name"] for s in plan.snapshots])
    except BaseException:
        for step in reversed(undo):  # the records of snapshots that were not copied
            await step()
        raise
    await _settle_snapshots(ctx, keys)
    found = await ctx.instances.get(key(target["project"], target["name"]))
    return found[0] if found else target
