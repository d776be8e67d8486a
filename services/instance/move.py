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
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared import faults
from shared.errors import BadRequest, Conflict, NotFound
from shared.state import key, mutate

from . import lifecycle, snapshots, validate
from .context import Context
from .copy import CopyPlan, _live_snapshots, snapshot_record, volume_copy
from .create import expand_profiles, nic_setup, with_config
from .drivers.base import InstanceSpec
from .drivers.router import type_of
from .names import host_name, host_of
from .records import expand


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
    devices = moved_devices(rec, pool)
    pcfg, pdevs = expand(await expand_profiles(ctx, project, rec["profiles"]),
                         rec["config"], devices)
    snaps = [] if instance_only else _live_snapshots(ctx, project, name)
    target = {**rec, "name": new_name, "pool": pool, "devices": devices,
              "expanded_config": pcfg, "expanded_devices": pdevs}
    nk, ok = key(project, new_name), key(project, name)
    renamed = nk != ok
    await _forget_interrupted(ctx, rec)
    # The journal: the volume being made on the new pool is this instance's, so a move
    # tried again after a crash removes what the dead one left there.
    await mutate(ctx.instances, ok, lambda r: {**r, "moving_to": {"pool": pool,
                                                                  "name": new_name}})
    if renamed:  # the new name is taken for the time of the move
        await ctx.instances.create(nk, {**target, "status": "Creating"},
                                   f"Instance {new_name!r}")
    try:
        path = await volume_copy(ctx, target, CopyPlan(source=rec),
                                 [s["name"] for s in snaps])
    except BaseException:
        await _drop_volume(ctx, project, pool, new_name, kind)
        if renamed:
            await ctx.instances.delete(nk)
        await mutate(ctx.instances, ok, lambda r: {
            x: v for x, v in r.items() if x != "moving_to"})
        raise
    faults.point("move:after_volume")
    target["volume"] = str(path)
    drv = ctx.drivers.for_instance(rec)
    nics, vol = await nic_setup(ctx, target)  # the stored MACs and host names: kept
    target = with_config(target, vol)
    await asyncio.to_thread(drv.purge, host_of(rec))
    spec = InstanceSpec(host_name(project, new_name), target["expanded_config"],
                        target["expanded_devices"], path, nics)
    made = await asyncio.to_thread(drv.create, spec)
    final = {**with_config(target, made), "status": "Stopped"}
    final.pop("moving_to", None)
    await ctx.instances.put(nk, final)
    if renamed:
        await ctx.instances.delete(ok)
    await _move_snapshot_records(ctx, rec, final, snaps)
    faults.point("move:after_records")
    await _drop_volume(ctx, project, rec["pool"], name, kind)
    if restart:
        final = await lifecycle.start(ctx, final)
    return final


async def _move_snapshot_records(ctx: Context, old: dict[str, Any], new: dict[str, Any],
                                 kept: list[dict[str, Any]]) -> None:
    if ctx.snapshots is None:
        return
    for snap in _live_snapshots(ctx, old["project"], old["name"]):
        old_key = snapshots.snapshot_key(old["project"], old["name"], snap["name"])
        if snap in kept:
            new_key = snapshots.snapshot_key(new["project"], new["name"], snap["name"])
            await ctx.snapshots.put(new_key, snapshot_record(snap, new))
            if new_key == old_key:
                continue
        await ctx.snapshots.delete(old_key)


async def _forget_interrupted(ctx: Context, rec: dict[str, Any]) -> None:
    """Remove the volume an interrupted move of ``rec`` left on its target pool."""
    moving = rec.get("moving_to")
    if not isinstance(moving, dict) or not moving.get("pool"):
        return
    name = moving.get("name") or rec["name"]
    owned = any(r["project"] == rec["project"] and r["name"] == name
                and r.get("pool") == moving["pool"] for r in ctx.instances.cached())
    if moving["pool"] != rec["pool"] and not owned:  # never another instance's volume
        await _drop_volume(ctx, rec["project"], moving["pool"], name, type_of(rec))


async def _drop_volume(ctx: Context, project: str, pool: str, name: str, kind: str) -> None:
    try:
        await ctx.remote.volume_delete(project, pool, name, kind)
    except NotFound:
        pass
