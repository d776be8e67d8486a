"""Moving an instance to another storage pool: ``lxc move c1 --storage other``.

The stock client (5.0, with the server's ``instance_pool_move``) sends one request,
``POST /1.0/instances/c1`` with ``{"name", "migration": true, "pool", "instance_only",
"live"}``. As LXD's instancePostPoolMigration: a running instance is stopped first and
started again afterwards (``live`` false refuses it instead), the instance keeps its name
(or takes ``name``), config, volatile keys (MACs stay) and snapshots (unless
``instance_only``), and its root disk device names the new pool.

Order, so that a failure leaves the instance as it was: the volume (with its snapshots)
is copied to the new pool first (undone on failure); only then is the driver's
definition pointed at the new volume, the records rewritten, and the old volume deleted.

Crash safety: the instance's record is the journal. ``moving_to`` (on the source record)
says where the instance goes, with step ``copying`` until the copy is whole, then
``copied`` (with the new volume's path); ``moving_from`` (on the target record: the same
one when the name is kept, else the new name's record, "Creating" until written whole)
says where it came from until the snapshot records and the old volume have followed. At
the service's next start (:func:`resume_all`) a move at ``copying`` is undone (the new
volume and the new name's record go), one at ``copied`` or later is finished; either
way the instance is started again if the move had stopped it. Fault points:
``move:after_volume``, ``move:after_purge``, ``move:before_record``, ``move:after_records``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared import faults
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.state import key, mutate

from . import lifecycle, reconcile, snapshots, validate
from .context import Context
from .copy import CopyPlan, _live_snapshots, snapshot_record, volume_copy
from .create import expand_profiles, nic_setup, with_config
from .drivers.base import InstanceSpec
from .drivers.router import type_of
from .names import host_name, host_of
from .records import expand

# The move's journal in the instance records: the source's says where it is going, the
# target's (the same record when the name is kept) where it came from.
JOURNAL_KEYS = ("moving_to", "moving_from")


def moved_devices(rec: dict[str, Any], pool: str) -> dict[str, dict[str, str]]:
    """The local devices with the root disk on ``pool`` (a root disk coming from a profile
    becomes a local device, as LXD does)."""
    root_name, root = validate.root_device(rec["expanded_devices"])
    devices = {k: dict(v) for k, v in rec["devices"].items()}
    devices[root_name] = {**root, "pool": pool}
    return devices


async def check(ctx: Context, rec: dict[str, Any], body: dict[str, Any]
                ) -> tuple[str, str, bool, bool]:
    """(new name, pool, instance_only, restart) or a 400/409 before any work."""
    pool = body.get("pool")
    if not isinstance(pool, str) or not pool:
        raise BadRequest("Invalid pool: expected a storage pool name")
    new_name = validate.check_name(body.get("name") or rec["name"])
    only = validate.check_bool("instance_only", body.get("instance_only", False))
    live = validate.check_bool("live", body.get("live", True))
    if pool == rec["pool"]:
        raise BadRequest(f"Instance {rec['name']!r} is already on storage pool {pool!r}")
    if new_name != rec["name"]:
        if await ctx.instances.get(key(rec["project"], new_name)) is not None:
            raise Conflict(f"Instance {new_name!r} already exists")
        if not ctx.drivers.for_instance(rec).capabilities.rename:
            raise BadRequest(f"Renaming a {type_of(rec)} is not supported yet")
    status = await lifecycle.host_status(ctx, rec)
    running = status in ("Running", "Frozen")
    if running and not live:
        raise BadRequest("Instance must be stopped to move between pools statelessly")
    return new_name, pool, only, running


async def move(ctx: Context, rec: dict[str, Any], new_name: str, pool: str,
               instance_only: bool, restart: bool) -> dict[str, Any]:
    """Do the move (inside the operation, under the instance's lock)."""
    project, name, kind = rec["project"], rec["name"], type_of(rec)
    if restart:
        rec = await lifecycle.stop(ctx, rec, -1, False)
    rec = await _forget_interrupted(ctx, rec)
    snaps = [] if instance_only else _live_snapshots(ctx, project, name)
    target = await _target(ctx, rec, pool, new_name)
    nk, ok = key(project, new_name), key(project, name)
    renamed = nk != ok
    # The journal (see resume): the volume being made on the new pool is this instance's,
    # so a crash from here on is undone, or finished once the copy is whole.
    journal = {"pool": pool, "name": new_name, "from_pool": rec["pool"], "from_name": name,
               "instance_only": instance_only, "snapshots": [s["name"] for s in snaps],
               "restart": restart, "step": "copying"}
    await mutate(ctx.instances, ok, lambda r: {**r, "moving_to": journal})
    if renamed:  # the new name is taken for the time of the move
        await ctx.instances.create(nk, {**target, "status": "Creating",
                                        "moving_from": journal}, f"Instance {new_name!r}")
    try:
        path = await volume_copy(ctx, target, CopyPlan(source=rec), journal["snapshots"])
    except BaseException:
        await _drop_volume(ctx, project, pool, new_name, kind)
        if renamed:
            await ctx.instances.delete(nk)
        await mutate(ctx.instances, ok, _without_journal)
        raise
    faults.point("move:after_volume")  # whole, but not journaled so: undone
    journal = {**journal, "step": "copied", "volume": str(path)}
    await mutate(ctx.instances, ok, lambda r: {**r, "moving_to": journal})
    final = await _switch(ctx, rec, target, journal)
    if restart:
        final = await lifecycle.start(ctx, final)
    return final


async def _target(ctx: Context, rec: dict[str, Any], pool: str, new_name: str
                  ) -> dict[str, Any]:
    """The record the instance will have on ``pool`` (before its driver's keys)."""
    devices = moved_devices(rec, pool)
    pcfg, pdevs = expand(await expand_profiles(ctx, rec["project"], rec["profiles"]),
                         rec["config"], devices)
    clean = {k: v for k, v in rec.items() if k not in JOURNAL_KEYS}
    return {**clean, "name": new_name, "pool": pool, "devices": devices,
            "expanded_config": pcfg, "expanded_devices": pdevs}


async def _switch(ctx: Context, rec: dict[str, Any], target: dict[str, Any],
                  journal: dict[str, Any]) -> dict[str, Any]:
    """From a whole copy on the new pool: the driver's definition and the record follow
    it, then the snapshot records and the old volume (:func:`_finish`). Each step may
    be done again after a crash (the old definition may already be gone, the new one
    half made)."""
    project = rec["project"]
    nk, ok = key(project, journal["name"]), key(project, journal["from_name"])
    target = {**target, "volume": journal["volume"]}
    drv = ctx.drivers.for_instance(rec)
    nics, vol = await nic_setup(ctx, target)  # the stored MACs and host names: kept
    target = with_config(target, vol)
    await asyncio.to_thread(drv.purge, host_of(rec))
    faults.point("move:after_purge")
    new_host = host_name(project, journal["name"])
    if new_host != host_of(rec):
        await asyncio.to_thread(drv.purge, new_host)  # a dead try's half definition
    spec = InstanceSpec(new_host, target["expanded_config"], target["expanded_devices"],
                        Path(journal["volume"]), nics)
    made = await asyncio.to_thread(drv.create, spec)
    faults.point("move:before_record")
    final = {**with_config(target, made), "status": "Stopped",
             "moving_from": {**journal, "step": "finishing"}}
    await ctx.instances.put(nk, final)
    if nk != ok:
        await ctx.instances.delete(ok)
    return await _finish(ctx, final)


async def _finish(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """The instance's record is on the new pool: its snapshot records follow it, the old
    volume (with its snapshots) goes, and the journal is closed."""
    journal = rec["moving_from"]
    project, old = rec["project"], journal["from_name"]
    kept = set(journal.get("snapshots") or [])
    if ctx.snapshots is not None:
        for snap in _live_snapshots(ctx, project, old):
            old_key = snapshots.snapshot_key(project, old, snap["name"])
            if snap["name"] in kept:
                new_key = snapshots.snapshot_key(project, rec["name"], snap["name"])
                if snap.get("pool") != rec["pool"] or new_key != old_key:
                    await ctx.snapshots.put(new_key, snapshot_record(snap, rec))
                if new_key == old_key:
                    continue
            await ctx.snapshots.delete(old_key)
    faults.point("move:after_records")
    owned = any(r["project"] == project and r["name"] == old
                and r.get("pool") == journal["from_pool"] for r in ctx.instances.cached())
    if journal["from_pool"] != rec["pool"] and not owned:
        await _drop_volume(ctx, project, journal["from_pool"], old, type_of(rec))
    return await mutate(ctx.instances, key(project, rec["name"]), _without_journal)


def _without_journal(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in JOURNAL_KEYS}


# -- a move a dead process left (the service's start) ---------------------------------


def interrupted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records an unfinished move holds: the source (``moving_to``) and the target
    (``moving_from``, the same record when the name is kept). The reconcile leaves these
    to :func:`resume` (a target still "Creating" is not an interrupted create)."""
    return [r for r in records if r.get("moving_to") or r.get("moving_from")]


async def resume(ctx: Context, project: str, name: str) -> dict[str, Any] | None:
    """Finish or undo the move journaled in instance ``name``'s record (under its lock).

    - ``moving_from`` on a record that is no longer "Creating": the record was written
      on the new pool: finish (source record, snapshot records, old volume);
    - ``moving_to`` at step ``copying``: the copy may be partial: undo it (the volume on
      the new pool, the new name's record); the old definition was never touched;
    - ``moving_to`` at step ``copied``: the copy is whole: go on from the driver's
      definition (:func:`_switch`), whatever part of it was done.
    An instance the move had stopped is started again. Returns the record, or None
    when there was nothing to do.
    """
    found = await ctx.instances.get(key(project, name))
    if found is None:
        return None
    rec = found[0]
    if rec.get("moving_from") and rec.get("status") != "Creating":
        journal = rec["moving_from"]
        if journal["from_name"] != name:
            src = await ctx.instances.get(key(project, journal["from_name"]))
            if src is not None and src[0].get("moving_to"):
                await ctx.instances.delete(key(project, journal["from_name"]))
        final = await _finish(ctx, rec)
    elif rec.get("moving_to"):
        journal = rec["moving_to"]
        target = await ctx.instances.get(key(project, journal["name"]))
        if journal["name"] != name and target is not None and \
                target[0].get("moving_from") and target[0].get("status") != "Creating":
            return None  # the target's record was written: resume() of it finishes
        if journal.get("step") == "copied":
            clean = _without_journal(rec)
            final = await _switch(ctx, clean, await _target(
                ctx, clean, journal["pool"], journal["name"]), journal)
        else:
            final = await _undo(ctx, rec, journal)
    else:
        return None
    if journal.get("restart"):
        try:
            final = await lifecycle.start(ctx, final)
        except CorralError as exc:
            ctx.log.warning("instance not started again after an interrupted move",
                            instance=final["name"], error=exc.message)
    return final


def resume_all(ctx: Context, lock: Any) -> asyncio.Task[None]:
    """Finish or undo, one after the other, the moves a dead process left (``lock(project,
    name)``: the instance's lock, held for each). Retried while the storage or network
    service does not answer yet, or the storage service still holds the volume (the copy
    the dead process asked for may still run); a move that fails otherwise keeps its
    journal for the next start."""
    async def run() -> None:
        for rec in interrupted(ctx.local()):
            for _ in range(reconcile.RETRIES):
                try:
                    async with lock(rec["project"], rec["name"]):
                        done = await resume(ctx, rec["project"], rec["name"])
                    if done is not None:
                        ctx.log.info("interrupted move resumed", instance=done["name"],
                                     pool=done.get("pool"))
                    break
                except (Unavailable, Conflict):  # a service away, a volume held (a copy
                    await asyncio.sleep(reconcile.RETRY_DELAY)  # the dead one began)
                except CorralError as exc:
                    ctx.log.error("interrupted move not resumed", instance=rec["name"],
                                  error=exc.message)
                    break

    return asyncio.create_task(run())


async def _undo(ctx: Context, rec: dict[str, Any], journal: dict[str, Any]
                ) -> dict[str, Any]:
    project, new_name = rec["project"], journal["name"]
    owned = any(r["project"] == project and r["name"] == new_name
                and r.get("pool") == journal["pool"] and r.get("status") != "Creating"
                for r in ctx.instances.cached())
    if journal["pool"] != rec["pool"] and not owned:
        await _drop_volume(ctx, project, journal["pool"], new_name, type_of(rec))
    if new_name != rec["name"]:
        target = await ctx.instances.get(key(project, new_name))
        if target is not None and target[0].get("status") == "Creating":
            await ctx.instances.delete(key(project, new_name))
    return await mutate(ctx.instances, key(project, rec["name"]), _without_journal)


async def _forget_interrupted(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """The record without the journal of a dead move :func:`resume` could not deal with
    at start: its cleanup finished (``moving_from``: the instance is whole on its new
    pool), or its copy undone (``moving_to``: the old volume is still whole, and this move
    copies from it again)."""
    if rec.get("moving_from") and rec.get("status") != "Creating":
        return await _finish(ctx, rec)
    if isinstance(rec.get("moving_to"), dict) and rec["moving_to"].get("pool"):
        return await _undo(ctx, rec, rec["moving_to"])
    return rec


async def _drop_volume(ctx: Context, project: str, pool: str, name: str, kind: str) -> None:
    try:
        await ctx.remote.volume_delete(project, pool, name, kind)
    except NotFound:
        pass
