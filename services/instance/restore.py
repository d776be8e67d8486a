"""Snapshot restore: LXD's ``PUT /1.0/instances/<name>`` carrying ``restore``.

Why its own path: LXD's ``instancePut`` branches on ``restore`` before anything else, and
a restore never reads the body's config, devices or profiles. ``lxc restore c1 snap0``
sends them empty, so treating that PUT as an update once replaced the instance's own
config and devices with nothing. Here the request is decided before any change: a
snapshot that does not exist is a 404 with LXD's message and the instance stays as it was.

What a restore does, as LXD's ``Restore``: a running instance is stopped (and started
again afterwards); the root volume gets the snapshot's content (the storage service swaps
it in atomically: the instance is never without a root volume); then the record gets the
snapshot's config, devices, profiles, description and ``ephemeral``. Volatile keys that
describe this host's state of the instance stay the instance's own (idmap, last power
state, host-side NIC names); the others come from the snapshot, and
``volatile.uuid.generation`` is new (LXD 5.0.9).

Crash safety: everything that could refuse the restore is checked first (:func:`plan`).
Then the instance record is marked ``restoring`` (the journal), the volume restored, and
only then the record rewritten without the mark. A process that dies in between leaves
the mark; :func:`reconcile` at the next start restores the volume again (the same result)
and writes the record, so no instance keeps a volume and a record from different points
in time.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared import faults
from shared.errors import BadRequest, CorralError, NotFound
from shared.models import lxd_time
from shared.state import key, mutate

from . import lifecycle, project_checks, snapshot_ops, snapshots, validate
from .context import Context
from .create import expand_profiles
from .drivers.router import type_of
from .live_changes import root_size_change
from .names import host_of
from .records import expand

RUNNING = ("Running", "Frozen")
# Volatile keys that say how this host runs the instance, not what it is: kept.
KEEP_PREFIXES = ("volatile.idmap.", "volatile.last_state.")
KEEP_SUFFIXES = (".host_name",)


def snapshot_name(instance: str, snap: Any) -> str:
    """The full ``<instance>/<snapshot>`` name of ``snap`` as LXD reads ``restore``.

    A bare name belongs to ``instance``; a full name must be one of its own snapshots.
    """
    if not isinstance(snap, str) or not snap.strip():
        raise BadRequest("Invalid restore request: 'restore' must be a snapshot name")
    owner, sep, short = snap.rpartition("/")
    if sep and owner != instance:
        raise BadRequest(f"Invalid snapshot {snap!r}: {instance!r} can only be restored "
                         "from one of its own snapshots")
    if not short.strip() or short in (".", "..") or "\0" in short:
        raise BadRequest(f"Invalid snapshot name {short!r}")
    return f"{instance}/{short}"


async def find_snapshot(ctx: Context | None, project: str, full_name: str
                        ) -> dict[str, Any] | None:
    """The snapshot's (whole) record, or None."""
    if ctx is None or ctx.snapshots is None:
        return None
    instance, _, short = full_name.partition("/")
    return snapshots.find(ctx.snapshots, project, instance, short)


def _kept(k: str) -> bool:
    return k.startswith("volatile.") and (k.startswith(KEEP_PREFIXES) or
                                          k.endswith(KEEP_SUFFIXES))


def restored_config(current: dict[str, str], snap: dict[str, str]) -> dict[str, str]:
    """The instance's own config after a restore (see the module docstring)."""
    out = {k: v for k, v in snap.items() if not _kept(k)}
    out.update({k: v for k, v in current.items() if _kept(k)})
    out["volatile.uuid.generation"] = str(uuid.uuid4())
    return out


async def check(ctx: Context | None, rec: dict[str, Any], body: dict[str, Any]
                ) -> dict[str, Any]:
    """The snapshot ``body`` asks for (404 with LXD's message, 400 for a stateful
    restore of a stateless snapshot), before any change."""
    full = snapshot_name(rec["name"], body.get("restore"))
    snap = await find_snapshot(ctx, rec["project"], full)
    if snap is None:
        raise NotFound(f"Snapshot {full} does not exist")
    stateful = body.get("stateful") or False
    if not isinstance(stateful, bool):
        raise BadRequest("Invalid stateful: expected true or false")
    if stateful and not snap.get("stateful"):
        raise BadRequest("Stateful snapshot restore requested but snapshot is stateless")
    if stateful and ctx is not None and not ctx.drivers.for_instance(
            rec).capabilities.stateful:
        raise BadRequest("This instance's driver cannot restore a memory state")
    return snap


async def plan(ctx: Context, rec: dict[str, Any], snap: dict[str, Any]
               ) -> dict[str, Any]:
    """The instance record the restore will write (400 for what cannot be applied)."""
    cfg = restored_config(rec["config"], snap["config"])
    devices = {k: dict(v) for k, v in snap["devices"].items()}
    profiles = list(snap["profiles"])
    try:
        docs = await expand_profiles(ctx, rec["project"], profiles)
    except NotFound as exc:
        raise BadRequest(f"Cannot restore {snap['instance']}/{snap['name']}: "
                         f"{exc.message} (the snapshot uses it)") from None
    pcfg, pdevs = expand(docs, cfg, devices)
    project_checks.updating(ctx, rec, pcfg, pdevs)
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    _, root = validate.root_device(pdevs)
    if rec.get("pool") and root.get("pool") != rec["pool"]:
        raise BadRequest(f"Cannot restore {snap['instance']}/{snap['name']}: its root disk "
                         f"is in pool {root.get('pool')!r}, the instance's volume in "
                         f"{rec['pool']!r}")
    if pcfg.get("raw.lxc", "") != rec["expanded_config"].get("raw.lxc", ""):
        await validate.check_for_type(type_of(rec), pcfg)
    if pcfg.get("security.privileged", "false") != rec["expanded_config"].get(
            "security.privileged", "false"):
        raise BadRequest("Cannot restore a snapshot taken with another "
                         "security.privileged: create a new instance from it instead")
    return {**rec, "config": cfg, "devices": devices, "profiles": profiles,
            "description": snap.get("description", ""),
            "ephemeral": bool(snap.get("ephemeral")),
            "expanded_config": pcfg, "expanded_devices": pdevs}


def _differs(cur: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether the driver's definition must change (``volatile.uuid.generation`` is
    new at every restore and means nothing to a driver)."""
    def defined(r: dict[str, Any]) -> dict[str, str]:
        return {k: v for k, v in r["expanded_config"].items()
                if k != "volatile.uuid.generation"}
    return defined(cur) != defined(target) or cur["expanded_devices"] != target[
        "expanded_devices"]


def _journal(r: dict[str, Any], snap: str, start: bool) -> dict[str, Any]:
    return {**r, "restoring": {"snapshot": snap, "start": start}}


def _unjournal(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "restoring"}


async def _write(ctx: Context, target: dict[str, Any]) -> dict[str, Any]:
    """The restored record (after the volume): the driver's definition, a root size
    quota that differs, then KV (the instance's state fields as they are now)."""
    k = key(target["project"], target["name"])
    cur, _rev = await ctx.instances.require(k, "Instance")
    if _differs(cur, target):  # most restores bring back what the driver has already
        drv = ctx.drivers.for_instance(cur)
        await asyncio.to_thread(drv.update, host_of(cur), target["expanded_config"],
                                target["expanded_devices"])
    size = root_size_change(cur["expanded_devices"], target["expanded_devices"])
    if size is not None and type_of(cur) == "container" and cur.get("pool"):
        await ctx.remote.volume_quota(cur["project"], cur["pool"], cur["name"], size)
    fields = ("config", "devices", "profiles", "description", "ephemeral",
              "expanded_config", "expanded_devices")

    def put(r: dict[str, Any]) -> dict[str, Any]:
        cfg = {x: v for x, v in target["config"].items() if not _kept(x)}
        cfg.update({x: v for x, v in r["config"].items() if _kept(x)})
        pcfg = {**target["expanded_config"], **{x: v for x, v in r["config"].items()
                                                if _kept(x)}}
        return _unjournal({**r, **{f: target[f] for f in fields}, "config": cfg,
                           "expanded_config": pcfg})

    return await mutate(ctx.instances, k, put, "Instance")


async def run(ctx: Context, rec: dict[str, Any], snap: dict[str, Any],
              stateful: bool = False) -> dict[str, Any]:
    """Restore ``rec`` from ``snap`` (under the instance's lock); nothing changes when it
    fails before the volume was swapped. ``stateful``: the instance resumes from the
    memory the snapshot saved (running afterwards, whatever it was before)."""
    target = await plan(ctx, rec, snap)
    status = await lifecycle.host_status(ctx, rec)
    was_running = status in RUNNING
    k = key(rec["project"], rec["name"])
    cur = await mutate(ctx.instances, k, lambda r: _journal(r, snap["name"], was_running),
                       "Instance")
    try:
        if was_running:
            cur = await lifecycle.stop(ctx, cur, 0, True)
        faults.point("restore:before_volume")
        await snapshot_ops.volume_snapshot_restore(ctx, snap)
    except BaseException:
        await mutate(ctx.instances, k, _unjournal, "Instance")
        if was_running:
            await _start_again(ctx, k)
        raise
    faults.point("restore:after_volume")
    new = await _write(ctx, target)
    if stateful:
        return await _resume(ctx, new, snap)
    if was_running:
        new = await lifecycle.start(ctx, new)
    return new


async def _resume(ctx: Context, rec: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    """The instance runs again from the snapshot's saved memory (the driver's part)."""
    drv = ctx.drivers.for_instance(rec)
    await asyncio.to_thread(drv.resume_memory, host_of(rec), snapshot_ops.memory_tag(
        snap["name"]), snap.get("memory_state") or "")
    power = {"volatile.last_state.power": "RUNNING"}
    return await mutate(ctx.instances, key(rec["project"], rec["name"]), lambda r: {
        **r, "status": "Running", "last_used_at": lxd_time(),
        "config": {**r["config"], **power},
        "expanded_config": {**r["expanded_config"], **power}}, "Instance")


async def _start_again(ctx: Context, k: str) -> None:
    """After a failed restore of a running instance: running as before (best effort)."""
    found = await ctx.instances.get(k)
    if found is None:
        return
    try:
        if await lifecycle.host_status(ctx, found[0]) not in RUNNING:
            await lifecycle.start(ctx, found[0])
    except CorralError as exc:
        ctx.log.warning("instance not started again after a failed restore",
                        instance=found[0]["name"], error=exc.message)


async def restore(ctx: Context, rec: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Restore ``rec`` from the snapshot ``body["restore"]``; nothing changes on failure."""
    snap = await check(ctx, rec, body)
    return await run(ctx, rec, snap, bool(body.get("stateful")))


# -- after a crash -----------------------------------------------------------------------------

async def finish(ctx: Context, rec: dict[str, Any]) -> None:
    """A restore whose process died: restore the volume again (the snapshot still is what
    was asked for), write the record, start the instance if it ran before."""
    journal = rec.get("restoring") or {}
    k = key(rec["project"], rec["name"])
    snap = snapshots.find(ctx.snapshots, rec["project"], rec["name"],  # type: ignore[arg-type]
                          str(journal.get("snapshot")))
    if snap is None:
        ctx.log.warning("the snapshot of an interrupted restore is gone; the instance "
                        "keeps its volume and config as they are", instance=rec["name"])
        await mutate(ctx.instances, k, _unjournal, "Instance")
        return
    for _ in range(snapshot_ops.RETRIES):
        try:
            target = await plan(ctx, _unjournal(rec), snap)
            await snapshot_ops.volume_snapshot_restore(ctx, snap)
            new = await _write(ctx, target)
            break
        except BadRequest as exc:  # the snapshot cannot apply any more: leave it be
            ctx.log.error("an interrupted restore cannot be finished", instance=rec["name"],
                          error=exc.message)
            await mutate(ctx.instances, k, _unjournal, "Instance")
            return
        except CorralError as exc:
            ctx.log.warning("finishing an interrupted restore, retrying",
                            instance=rec["name"], error=exc.message)
            await asyncio.sleep(snapshot_ops.RETRY_DELAY)
    else:
        ctx.log.error("gave up finishing an interrupted restore", instance=rec["name"])
        return
    ctx.log.info("interrupted restore finished", instance=rec["name"],
                 snapshot=snap["name"])
    if journal.get("start"):
        try:
            await lifecycle.start(ctx, new)
        except CorralError as exc:
            ctx.log.warning("instance not started after an interrupted restore",
                            instance=rec["name"], error=exc.message)


def reconcile(ctx: Context, lock: Any) -> list[asyncio.Task[None]]:
    """Background finishers of every restore a dead process left (``lock(project,
    name)``: the instance's lock, held while each one runs)."""
    async def one(rec: dict[str, Any]) -> None:
        async with lock(rec["project"], rec["name"]):
            found = await ctx.instances.get(key(rec["project"], rec["name"]))
            if found is not None and found[0].get("restoring"):
                await finish(ctx, found[0])

    return [asyncio.create_task(one(r)) for r in ctx.local()
            if r.get("restoring") and r.get("status") not in ("Creating", "Deleting")]
