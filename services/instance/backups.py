"""Instance backups: records in the KV bucket ``backups``, made, renamed, deleted, expired.

Design (why no tarball is ever stored): LXD writes each backup's whole tarball to
``/var/lib/lxd/backups`` at ``POST .../backups`` and users lose exports to full disks. Here
a backup is a record plus what the storage service froze for it (btrfs: read-only
subvolume snapshots of the volume and of each snapshot, no data copied; dir: nothing, the
export reads the live volume). The tarball is generated while it is downloaded
(:mod:`backup_export`), streamed over the bus to the gateway with credit-based flow
control. A stored backup therefore costs only the blocks the instance changes afterwards.

Record (key ``key(project, instance, backup)``)::

    {"project", "instance", "name", "created_at", "expires_at", "instance_only",
     "optimized_storage", "compression_algorithm", "pool", "type", "snapshots": [...],
     "creating": True}                 # only until the storage service froze the volume

A record still ``creating`` when the service starts is removed with its frozen copies;
so are backups whose instance is gone (deleted or renamed) and expired ones (a sweep).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from typing import Any

from shared import faults
from shared.api import url
from shared.backup import layout
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.messages.backup import (
    VolumeBackupFreezeRequest,
    VolumeBackupRenameRequest,
    VolumeBackupReply,
    VolumeBackupRequest,
)
from shared.models import lxd_time
from shared.state import Store, key

from . import snapshots as snapshot_records
from .context import Context
from .records import public as instance_public

NO_EXPIRY = "0001-01-01T00:00:00Z"
STORAGE_TIMEOUT = 120.0
# Backups this process is making: their "creating" records are not a crash's leftovers.
_making: set[str] = set()
_NAME = re.compile(r"^backup(\d+)$")


def backup_key(project: str, instance: str, backup: str) -> str:
    return key(project, instance, backup)


def records(store: Store, project: str, instance: str) -> list[dict[str, Any]]:
    return sorted((r for r in store.cached()
                   if r["project"] == project and r["instance"] == instance),
                  key=lambda r: (snapshot_records.created(r), r["name"]))


def backup_url(rec: dict[str, Any]) -> str:
    return url(f"instances/{rec['instance']}/backups", rec["name"], rec["project"])


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """LXD's InstanceBackup object."""
    return {"name": rec["name"], "created_at": rec["created_at"],
            "expires_at": rec["expires_at"], "instance_only": rec["instance_only"],
            "container_only": rec["instance_only"],
            "optimized_storage": rec["optimized_storage"]}


def next_name(existing: list[str]) -> str:
    """LXD's default name: ``backup<N>``, one more than the highest such name."""
    top = -1
    for n in existing:
        m = _NAME.match(n)
        if m:
            top = max(top, int(m.group(1)))
    return f"backup{top + 1}"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest("Invalid backup name: expected a non-empty string")
    if "/" in name:
        raise BadRequest("Backup names may not contain slashes")
    if len(name) > 63 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise BadRequest(f"Invalid backup name {name[:80]!r}: letters, digits, '.', '_' "
                         "and '-' only, at most 63")
    return name


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def parse_time(value: str) -> datetime:
    """RFC 3339 as Go writes it (nanoseconds, ``Z`` or an offset); ValueError if not."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(value)
    frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
    zone = m.group(3) or "Z"
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{'+00:00' if zone == 'Z' else zone}")


def _expiry(value: Any) -> str:
    if value in (None, ""):
        return NO_EXPIRY
    if not isinstance(value, str):
        raise BadRequest("Invalid expires_at: expected an RFC 3339 time")
    try:
        when = parse_time(value)
    except (ValueError, TypeError):
        raise BadRequest(f"Invalid expires_at {value[:60]!r}: expected an RFC 3339 "
                         "time") from None
    if when.year <= 1:
        return NO_EXPIRY
    return lxd_time(when)


def stale(rec: dict[str, Any], inst: dict[str, Any]) -> bool:
    """A backup of an earlier instance of that name (deleted, then made again): the sweep
    had not removed it yet. It is never shown as the new instance's."""
    mine = rec.get("instance_uuid")
    return bool(mine) and mine != (inst.get("config") or {}).get("volatile.uuid")


def expired(rec: dict[str, Any], now: datetime | None = None) -> bool:
    if rec.get("expires_at", NO_EXPIRY) == NO_EXPIRY:
        return False
    try:
        when = parse_time(rec["expires_at"])
    except ValueError:
        return False
    return when.year > 1 and when <= (now or datetime.now(timezone.utc))


def prepare(store: Store, inst: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The record of a new backup from LXD's InstanceBackupsPost (400 on bad input, 409 on
    a duplicate); not written yet."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid backup request: expected a JSON object")
    existing = [r["name"] for r in records(store, inst["project"], inst["name"])]
    name = body.get("name") or next_name(existing)
    check_name(name)
    if name in existing:
        raise Conflict(f"Backup {inst['name']}/{name} already exists")
    for flag in ("instance_only", "container_only", "optimized_storage"):
        if not isinstance(body.get(flag, False), bool):
            raise BadRequest(f"Invalid {flag}: expected true or false")
    algo = layout.check_compression(body.get("compression_algorithm") or None)
    return {"project": inst["project"], "instance": inst["name"], "name": name,
            "created_at": lxd_time(), "expires_at": _expiry(body.get("expires_at")),
            "instance_only": bool(body.get("instance_only") or body.get("container_only")),
            "optimized_storage": bool(body.get("optimized_storage")),
            "compression_algorithm": algo, "pool": inst["pool"], "type": inst["type"],
            "snapshots": [], "creating": True}


async def storage(ctx: Context, verb: str, msg: Any, timeout: float = STORAGE_TIMEOUT) -> Any:
    return await ctx.remote.bus.request("storage", verb, msg, node=ctx.remote.node,
                                        timeout=timeout)


def _volume_ref(rec: dict[str, Any]) -> dict[str, Any]:
    return {"project": rec["project"], "pool": rec["pool"], "kind": rec["type"],
            "name": rec["instance"], "backup": rec["name"], "snapshots": rec["snapshots"]}


async def index(ctx: Context, inst: dict[str, Any], rec: dict[str, Any],
                vol: VolumeBackupReply) -> dict[str, Any]:
    """``backup/index.yaml`` as LXD writes it (and ``backup.yaml``: its ``config``)."""
    snaps = [] if rec["instance_only"] else rec.get("snapshot_records") or []
    vm = inst["type"] == "virtual-machine"
    # A VM's disk is a qcow2 file, not a subvolume: its backups are plain (raw .img)
    # whatever was asked, as LXD falls back where a driver cannot optimize.
    optimized = rec["optimized_storage"] and vol.driver == "btrfs" and not vm
    profiles = []
    for p in inst.get("profiles") or []:
        try:
            prof, _rev = await ctx.profiles.get(inst["project"], p)
            profiles.append(ctx.profiles.public(prof, []))
        except CorralError:
            continue
    cfg = {
        "container": instance_public(inst, "Stopped" if inst.get("status") != "Running"
                                     else "Running"),
        "snapshots": [_snapshot_public(s) for s in snaps],
        "pool": vol.pool,
        "profiles": profiles,
        "volume": vol.volume,
        "volume_snapshots": [{"description": "", "expires_at": s.get("expires_at", NO_EXPIRY),
                              "name": s["name"], "config": {},
                              "content_type": "block" if vm else "filesystem",
                              "created_at": s.get("created_at", NO_EXPIRY)} for s in snaps],
    }
    return {"name": inst["name"], "backend": vol.driver, "pool": inst["pool"],
            "snapshots": [s["name"] for s in snaps],
            "optimized": optimized, "optimized_header": optimized,
            "type": inst["type"], "config": cfg}


def _snapshot_public(s: dict[str, Any]) -> dict[str, Any]:
    """LXD's InstanceSnapshot in index.yaml (``size: -1`` as LXD writes it)."""
    return {"expires_at": s.get("expires_at", NO_EXPIRY),
            "architecture": s.get("architecture", ""), "config": s.get("config") or {},
            "created_at": s.get("created_at", NO_EXPIRY), "devices": s.get("devices") or {},
            "ephemeral": bool(s.get("ephemeral")),
            "expanded_config": s.get("expanded_config") or {},
            "expanded_devices": s.get("expanded_devices") or {},
            "last_used_at": s.get("last_used_at", NO_EXPIRY), "name": s["name"],
            "profiles": s.get("profiles") or [], "stateful": bool(s.get("stateful")),
            "size": -1}


async def create(ctx: Context, store: Store, inst: dict[str, Any], rec: dict[str, Any]
                 ) -> dict[str, Any]:
    """The operation's body: record (journal) first, then the frozen copies."""
    k = backup_key(rec["project"], rec["instance"], rec["name"])
    if not rec["instance_only"] and ctx.snapshots is not None:
        # as they are now: the index of the backup does not change with the instance
        rec["snapshot_records"] = [s for s in snapshot_records.records(
            ctx.snapshots, inst["project"], inst["name"]) if not s.get("creating")]
        rec["snapshots"] = [s["name"] for s in rec["snapshot_records"]]
    rec["instance_record"] = {k: v for k, v in inst.items() if k != "volume"}
    rec["instance_uuid"] = (inst.get("config") or {}).get("volatile.uuid", "")
    await store.create(k, rec, f"Backup {rec['instance']}/{rec['name']}")
    _making.add(k)
    try:
        faults.point("backup:after_record")
        ref = _volume_ref(rec)
        # backup.yaml goes into the frozen copy (LXD's importer reads it from the volume);
        # the storage service completes its pool and volume parts
        blank = VolumeBackupReply(path="", driver="", pool={}, volume={})
        conf = (await index(ctx, inst, rec, blank))["config"]
        await storage(ctx, "volume_backup_freeze", VolumeBackupFreezeRequest(
            **ref, backup_config=conf))
        faults.point("backup:after_freeze")
        done = {**rec}
        done.pop("creating", None)
        await store.put(k, done)
        return done
    except BaseException:
        await asyncio.shield(drop(ctx, store, rec))
        raise
    finally:
        _making.discard(k)


async def drop(ctx: Context, store: Store, rec: dict[str, Any]) -> None:
    """Remove the frozen copies, then the record (it stays if the storage service cannot
    be reached: the journal for the next sweep)."""
    try:
        await storage(ctx, "volume_backup_delete", VolumeBackupRequest(**_volume_ref(rec)))
    except NotFound:
        pass
    except (Unavailable, CorralError) as exc:
        ctx.log.warning("backup not removed from storage, retried later",
                        backup=rec["name"], instance=rec["instance"], error=str(exc))
        return
    await store.delete(backup_key(rec["project"], rec["instance"], rec["name"]))


async def rename(ctx: Context, store: Store, rec: dict[str, Any], new: str
                 ) -> dict[str, Any]:
    check_name(new)
    if any(r["name"] == new for r in records(store, rec["project"], rec["instance"])):
        raise Conflict(f"Backup {rec['instance']}/{new} already exists")
    moved = {**rec, "name": new}
    await store.create(backup_key(rec["project"], rec["instance"], new), moved,
                       f"Backup {rec['instance']}/{new}")
    try:
        await storage(ctx, "volume_backup_rename", VolumeBackupRenameRequest(
            **_volume_ref(rec), new_backup=new))
    except BaseException:
        await store.delete(backup_key(rec["project"], rec["instance"], new))
        raise
    await store.delete(backup_key(rec["project"], rec["instance"], rec["name"]))
    return moved


async def sweep(ctx: Context, store: Store) -> int:
    """Remove unfinished backups (a crash mid-create), expired ones and those whose
    instance is gone; returns how many."""
    removed = 0
    live = {key(r["project"], r["name"]): r for r in ctx.instances.cached()}
    by_uuid = {(r["project"], (r.get("config") or {}).get("volatile.uuid")): r
               for r in ctx.instances.cached() if r.get("status") not in ("Creating",
                                                                          "Deleting")}
    for rec in list(store.cached()):
        inst = live.get(key(rec["project"], rec["instance"]))
        gone = inst is None or inst.get("status") == "Deleting" or stale(rec, inst)
        moved = by_uuid.get((rec["project"], rec.get("instance_uuid"))) \
            if gone and rec.get("instance_uuid") else None
        if moved is not None and not rec.get("creating") and not expired(rec):
            try:  # the instance was renamed: its backups follow it, as in LXD
                await follow(ctx, store, rec, moved["name"])
                continue
            except CorralError as exc:
                ctx.log.warning("backup not moved to the renamed instance",
                                backup=rec["name"], error=exc.message)
        if rec.get("creating") and backup_key(rec["project"], rec["instance"],
                                              rec["name"]) in _making:
            continue  # being made right now, by us
        if rec.get("creating") or gone or expired(rec):
            await drop(ctx, store, rec)
            removed += 1
    return removed


async def adopt(ctx: Context, store: Store, inst: dict[str, Any]) -> None:
    """Backups of this instance from before a rename, moved under its name now (not at
    the next sweep)."""
    mine = (inst.get("config") or {}).get("volatile.uuid")
    if not mine:
        return
    for rec in list(store.cached()):
        if rec["project"] == inst["project"] and rec["instance"] != inst["name"] and \
                rec.get("instance_uuid") == mine and not rec.get("creating"):
            await follow(ctx, store, rec, inst["name"])


async def follow(ctx: Context, store: Store, rec: dict[str, Any], instance: str) -> None:
    """Re-key a backup under its instance's new name (frozen copies moved first)."""
    moved = {**rec, "instance": instance}
    await store.create(backup_key(rec["project"], instance, rec["name"]), moved,
                       f"Backup {instance}/{rec['name']}")
    try:
        await storage(ctx, "volume_backup_rename", VolumeBackupRenameRequest(
            **_volume_ref(rec), new_backup=rec["name"], new_name=instance))
    except BaseException:
        await store.delete(backup_key(rec["project"], instance, rec["name"]))
        raise
    await store.delete(backup_key(rec["project"], rec["instance"], rec["name"]))
