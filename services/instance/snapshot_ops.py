"""Making, removing, renaming and changing instance snapshots (records + volume snapshots).

Why a journal on each record: a snapshot is two things in two services (this service's
record, the storage service's volume snapshot), and the process may die between the two
writes. Each change writes its intent to the record first (``creating``, ``deleting``,
``renaming_to``), then asks the storage service, then finishes the record; the reconcile
(:func:`reconcile`) at the next start finishes or undoes what a dead process left, so no
record points at a missing volume snapshot and no volume snapshot outlives its record.

The storage calls are here (not in ``remote.py``): the node verbs
``volume_snapshot_create/_delete/_rename/_restore/_list`` of ``shared/messages/storage.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from shared import faults
from shared.api import etag as make_etag
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.messages.storage import (
    VolumeRequest,
    VolumeSnapshotListReply,
    VolumeSnapshotRenameRequest,
    VolumeSnapshotRequest,
)
from shared.models import Reply
from shared.state import key, mutate

from . import project_checks, snapshots
from .context import Context
from .drivers.router import type_of
from .names import host_of

# A dir pool copies the whole volume: minutes for a big one; the storage process is
# watched meanwhile (``Remote.watched``), so its death ends the wait within seconds.
SNAPSHOT_TIMEOUT = 600.0
QUICK_TIMEOUT = 30.0
RETRIES = 900  # reconcile work waiting for the storage service: RETRIES * RETRY_DELAY s
RETRY_DELAY = 2.0
_pending: set[asyncio.Task[None]] = set()


# -- the storage service's verbs -------------------------------------------------------------

async def _ask(ctx: Context, verb: str, msg: Any, what: str, slow: bool = False) -> Reply:
    bus = ctx.remote.bus
    if not slow:
        return await bus.request("storage", verb, msg, node=ctx.remote.node,
                                 timeout=QUICK_TIMEOUT)
    return await ctx.remote.watched("storage", lambda: bus.request(
        "storage", verb, msg, node=ctx.remote.node, timeout=SNAPSHOT_TIMEOUT), what)


def _snap_msg(rec: dict[str, Any], snap: str) -> VolumeSnapshotRequest:
    return VolumeSnapshotRequest(project=rec["project"], pool=rec["pool"],
                                 kind=type_of(rec), name=rec.get("instance") or rec["name"],
                                 snapshot=snap)


async def volume_snapshot_create(ctx: Context, snap: dict[str, Any]) -> None:
    await _ask(ctx, "volume_snapshot_create", _snap_msg(snap, snap["name"]),
               f"snapshotting {snap['instance']!r}", slow=True)


async def volume_snapshot_delete(ctx: Context, snap: dict[str, Any], name: str | None = None
                                 ) -> None:
    """Remove the volume snapshot; one that is not there is already removed."""
    try:
        await _ask(ctx, "volume_snapshot_delete", _snap_msg(snap, name or snap["name"]),
                   f"removing snapshot {snap['name']!r}", slow=True)
    except NotFound:
        pass


async def volume_snapshot_restore(ctx: Context, snap: dict[str, Any]) -> None:
    await _ask(ctx, "volume_snapshot_restore", _snap_msg(snap, snap["name"]),
               f"restoring {snap['instance']!r} from {snap['name']!r}", slow=True)


async def volume_snapshot_rename(ctx: Context, snap: dict[str, Any], new: str) -> None:
    m = _snap_msg(snap, snap["name"])
    await _ask(ctx, "volume_snapshot_rename", VolumeSnapshotRenameRequest(
        **m.model_dump(exclude={"v"}), new_snapshot=new), "renaming a snapshot")


async def volume_snapshot_list(ctx: Context, inst: dict[str, Any]) -> list[str]:
    req = VolumeRequest(project=inst["project"], pool=inst["pool"], kind=type_of(inst),
                        name=inst.get("instance") or inst["name"])
    reply = await _ask(ctx, "volume_snapshot_list", req, "listing snapshots")
    return VolumeSnapshotListReply.model_validate(reply.metadata).snapshots


# -- stateful snapshots ------------------------------------------------------------------

@lru_cache(maxsize=1)
def criu_problem() -> str | None:
    """Why CRIU cannot checkpoint containers here (None when ``criu check`` passes):
    detected once per process, never assumed."""
    criu = shutil.which("criu")
    if criu is None:
        return "CRIU isn't installed"
    try:
        r = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'criu check' failed: {exc}"
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"'criu check' fails on this host ({last[0][:200]})"
    return None


def memory_tag(snapshot: str) -> str:
    """The name the driver keeps a stateful snapshot's memory under (in the disk)."""
    return f"corral-{snapshot}"


def check_stateful(inst: dict[str, Any], running: bool, capable: bool = False) -> None:
    """400 with the reason when a stateful snapshot cannot be taken of ``inst``
    (``capable``: its driver saves memory state, e.g. VMs through libvirt)."""
    if not running:
        raise BadRequest("Unable to create a stateful snapshot: the instance isn't running")
    if capable:
        return
    if type_of(inst) == "container":
        problem = criu_problem()
        if problem:
            raise BadRequest(f"Unable to create a stateful snapshot: {problem} (container "
                             "state needs a working CRIU); take a stateless snapshot "
                             "instead (without --stateful)")
        raise BadRequest("Unable to create a stateful snapshot: checkpointing containers "
                         "is not supported by Corral yet")
    raise BadRequest("Unable to create a stateful snapshot: the memory state of virtual "
                     "machines is not supported by Corral yet; take a stateless snapshot "
                     "instead (without --stateful)")


# -- create ----------------------------------------------------------------------------------

def plan_create(ctx: Context, inst: dict[str, Any], body: dict[str, Any],
                now: datetime | None = None) -> tuple[str, str, bool]:
    """The name, ``expires_at`` and ``stateful`` of a snapshot ``body`` asks for (400/409
    before any change)."""
    assert ctx.snapshots is not None
    now = now or datetime.now(timezone.utc)
    project_checks.snapshot_creation(ctx, inst["project"])  # restricted.snapshots
    if not isinstance(body, dict):
        raise BadRequest("Invalid snapshot request: expected a JSON object")
    name = body.get("name")
    existing = [r["name"] for r in snapshots.all_records(ctx.snapshots, inst["project"],
                                                         inst["name"])]
    if name in (None, ""):
        name = snapshots.next_name(inst["expanded_config"].get("snapshots.pattern"),
                                   existing, now)
    name = snapshots.check_name(name)
    if name in existing:
        raise Conflict(f"Snapshot \"{inst['name']}/{name}\" already exists")
    stateful = body.get("stateful") or False
    if not isinstance(stateful, bool):
        raise BadRequest("Invalid stateful: expected true or false")
    if "expires_at" in body and body["expires_at"] is not None:
        expires = snapshots.normal_time(body["expires_at"])
    else:
        expires = snapshots.expiry_from_config(inst["expanded_config"], now)
    return name, expires, stateful


async def create(ctx: Context, inst: dict[str, Any], name: str, expires_at: str,
                 stateful: bool = False) -> dict[str, Any]:
    """Record (``creating``), volume snapshot, record whole; undone on failure."""
    assert ctx.snapshots is not None
    now = datetime.now(timezone.utc)
    rec = snapshots.new_record(inst, name, expires_at, stateful, now)
    k = snapshots.snapshot_key(inst["project"], inst["name"], name)
    await ctx.snapshots.create(k, rec, f"Snapshot \"{inst['name']}/{name}\"")
    faults.point("snapshot:after_record")
    try:
        if stateful:  # memory saved into the disk first, so the copy carries it
            rec["memory_state"] = await _with_memory(ctx, inst, rec)
        else:
            await volume_snapshot_create(ctx, rec)
        faults.point("snapshot:after_volume")
    except BaseException:
        try:
            await volume_snapshot_delete(ctx, rec)  # a repeat of a lost answer made it
            await ctx.snapshots.delete(k)
        except CorralError as exc:  # the storage service is away: finished when back
            ctx.log.warning("snapshot undo deferred", instance=inst["name"],
                            snapshot=name, error=exc.message)
            _spawn(finish(ctx, rec))
        raise
    done = {x: v for x, v in rec.items() if x != "creating"}
    await ctx.snapshots.put(k, done)
    return done


async def _with_memory(ctx: Context, inst: dict[str, Any], rec: dict[str, Any]) -> str:
    """A stateful snapshot: the driver saves the running instance's memory into its disk
    (``save_memory``), the volume snapshot copies the disk with it, and the live disk
    forgets it again; returns what a stateful restore hands back to the driver."""
    drv = ctx.drivers.for_instance(inst)
    host, tag = host_of(inst), memory_tag(rec["name"])
    saved = await asyncio.to_thread(drv.save_memory, host, tag)
    try:
        await volume_snapshot_create(ctx, rec)
    finally:
        await asyncio.to_thread(drv.drop_memory, host, tag)
    return saved


# -- delete, rename, update ------------------------------------------------------------------

async def delete(ctx: Context, snap: dict[str, Any]) -> None:
    """``deleting`` first, then the volume snapshot, then the record."""
    assert ctx.snapshots is not None
    k = snapshots.snapshot_key(snap["project"], snap["instance"], snap["name"])
    await mutate(ctx.snapshots, k, lambda r: {**r, "deleting": True}, "Snapshot")
    faults.point("snapshot:delete_marked")
    try:
        await volume_snapshot_delete(ctx, snap)
    except Unavailable:  # the storage service is away: the delete ends when it is back
        _spawn(finish(ctx, {**snap, "deleting": True}))
        raise
    except BaseException:  # refused (e.g. the volume is busy): the snapshot stays
        await mutate(ctx.snapshots, k, _unflag, "Snapshot")
        raise
    await ctx.snapshots.delete(k)


async def rename(ctx: Context, snap: dict[str, Any], new_name: Any) -> dict[str, Any]:
    """``renaming_to`` on the old record, volume snapshot renamed, new record, old gone."""
    assert ctx.snapshots is not None
    new_name = snapshots.check_name(new_name)
    project, inst = snap["project"], snap["instance"]
    if new_name == snap["name"]:
        return snap
    nk = snapshots.snapshot_key(project, inst, new_name)
    if await ctx.snapshots.get(nk) is not None:
        raise Conflict(f"Name '{inst}/{new_name}' already in use")
    k = snapshots.snapshot_key(project, inst, snap["name"])
    await mutate(ctx.snapshots, k, lambda r: {**r, "renaming_to": new_name}, "Snapshot")
    try:
        await volume_snapshot_rename(ctx, snap, new_name)
    except BaseException:
        await mutate(ctx.snapshots, k, _unflag, "Snapshot")
        raise
    faults.point("snapshot:rename_after_volume")
    new = {**_unflag(snap), "name": new_name}
    await ctx.snapshots.put(nk, new)
    await ctx.snapshots.delete(k)
    return new


def _unflag(r: dict[str, Any]) -> dict[str, Any]:
    return {x: v for x, v in r.items() if x not in snapshots.JOURNAL}


def etag(snap: dict[str, Any]) -> str:
    """Over what PUT changes (LXD hashes the expiry date)."""
    return make_etag(snap.get("expires_at"), snap.get("description", ""))


async def update(ctx: Context, snap: dict[str, Any], body: dict[str, Any],
                 patch: bool) -> dict[str, Any]:
    """PUT/PATCH: ``expires_at`` and ``description``. LXD's PUT leaves ``expires_at``
    alone when the body lacks it; so do both here."""
    assert ctx.snapshots is not None
    if not isinstance(body, dict):
        raise BadRequest("Invalid snapshot update: expected a JSON object")
    changes: dict[str, Any] = {}
    if "expires_at" in body:
        changes["expires_at"] = snapshots.normal_time(body["expires_at"])
    if "description" in body:
        desc = body["description"]
        if desc is not None and not isinstance(desc, str):
            raise BadRequest("Invalid description: expected a string")
        changes["description"] = desc or ""
    elif not patch:
        changes["description"] = snap.get("description", "")
    k = snapshots.snapshot_key(snap["project"], snap["instance"], snap["name"])
    return await mutate(ctx.snapshots, k, lambda r: {**r, **changes}, "Snapshot")


# -- the instance's own delete and rename ----------------------------------------------------

async def forget_all(ctx: Context, project: str, instance: str) -> None:
    """Drop every snapshot record of an instance whose volume (and with it, its volume
    snapshots: one storage call) is gone."""
    if ctx.snapshots is None:
        return
    for r in snapshots.all_records(ctx.snapshots, project, instance):
        await ctx.snapshots.delete(snapshots.snapshot_key(project, instance, r["name"]))


async def rename_all(ctx: Context, project: str, old: str, new: str) -> None:
    """The instance was renamed (its volume, snapshots included, moved with it): its
    snapshot records follow (new keys first, then the old ones go)."""
    if ctx.snapshots is None:
        return
    recs = snapshots.all_records(ctx.snapshots, project, old)
    for r in recs:
        await ctx.snapshots.put(snapshots.snapshot_key(project, new, r["name"]),
                                {**r, "instance": new})
    for r in recs:
        await ctx.snapshots.delete(snapshots.snapshot_key(project, old, r["name"]))


# -- after a crash -----------------------------------------------------------------------------

def _spawn(coro: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(coro)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def _with_storage(ctx: Context, what: str, fn: Any) -> bool:
    """Run ``fn()`` until the storage service answers it (it may start after us)."""
    for _ in range(RETRIES):
        try:
            await fn()
            return True
        except Unavailable:
            await asyncio.sleep(RETRY_DELAY)
        except CorralError as exc:
            ctx.log.warning("snapshot cleanup failed, retrying", what=what,
                            error=exc.message)
            await asyncio.sleep(RETRY_DELAY)
    ctx.log.error("gave up a snapshot cleanup", what=what)
    return False


async def finish(ctx: Context, snap: dict[str, Any]) -> None:
    """Finish or undo what a dead process left of one snapshot record."""
    assert ctx.snapshots is not None
    project, inst, name = snap["project"], snap["instance"], snap["name"]
    k = snapshots.snapshot_key(project, inst, name)
    what = f"{inst}/{name}"
    if snap.get("creating") or snap.get("deleting"):
        async def drop() -> None:
            await volume_snapshot_delete(ctx, snap)
            await ctx.snapshots.delete(k)  # type: ignore[union-attr]
        if await _with_storage(ctx, what, drop):
            ctx.log.info("interrupted snapshot create or delete cleaned up", snapshot=what)
        return
    new = snap.get("renaming_to")
    if new:
        async def settle() -> None:
            on_disk = await volume_snapshot_list(ctx, snap)
            if new in on_disk and name not in on_disk:  # the volume snapshot was renamed
                await ctx.snapshots.put(  # type: ignore[union-attr]
                    snapshots.snapshot_key(project, inst, new), {**_unflag(snap), "name": new})
                await ctx.snapshots.delete(k)  # type: ignore[union-attr]
            else:
                await mutate(ctx.snapshots, k, _unflag, "Snapshot")  # type: ignore[arg-type]
        await _with_storage(ctx, what, settle)


async def reconcile(ctx: Context) -> list[asyncio.Task[None]]:
    """At start: finish every unfinished snapshot record (in the background: the storage
    service may not be up yet); drop records of instances that no longer exist."""
    if ctx.snapshots is None:
        return []
    instances = {key(r["project"], r["name"]) for r in ctx.instances.cached()}
    tasks = []
    for snap in list(ctx.snapshots.cached()):
        if key(snap["project"], snap["instance"]) not in instances:
            ctx.log.warning("removing the record of a snapshot without an instance",
                            instance=snap["instance"], snapshot=snap["name"])
            await ctx.snapshots.delete(snapshots.snapshot_key(
                snap["project"], snap["instance"], snap["name"]))
        elif not snapshots.whole(snap):
            ctx.log.warning("finishing an interrupted snapshot change",
                            instance=snap["instance"], snapshot=snap["name"])
            tasks.append(_spawn(finish(ctx, snap)))
    return tasks
