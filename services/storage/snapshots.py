"""Snapshots of volumes on this node: create, delete, rename, restore, list, path.

The host is the truth: a volume's snapshots are what its ``<kind>-snapshots/<name>/``
directory holds (the instance service keeps the records, with dates and expiry, and
compares). The driver makes every change crash-safe (see ``Driver.create_snapshot`` and
``Driver.restore_snapshot``); this module adds what needs the service's state:

- a volume being made (its record says ``creating``) or deleted is a 409: a snapshot of
  half a volume, or a restore into one being removed, must not happen;
- operations on one volume run one after the other (an asyncio lock per volume), while
  it is marked busy (``Volumes.holding``) so a delete or rename meanwhile is a 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from shared.errors import BadRequest, Conflict
from shared.log import get_logger
from shared.messages.storage import (
    VolumePathRequest,
    VolumeRequest,
    VolumeSnapshotRenameRequest,
    VolumeSnapshotRequest,
)

from .drivers import Driver
from .drivers.base import SNAPSHOT_KINDS
from .drivers.util import validate_name
from .volumes import Volumes, check_kind, disk_name

# One lock per volume key: operations on a volume wait for each other (a few per volume
# at most; kept for the process's life).
_locks: dict[str, asyncio.Lock] = {}
log = get_logger(component="storage")


def check_snapshot_name(name: str) -> str:
    """LXD's snapshot name rules (no '/', not '.' or '..', no whitespace...)."""
    if not isinstance(name, str) or not name:
        raise BadRequest("Invalid snapshot name '': the name must not be empty")
    return validate_name("snapshot", name)


def label(req: VolumeRequest) -> str:
    return f"Storage volume {req.kind}/{req.name}"


async def refuse_unfinished(volumes: Volumes, k: str, what: str) -> None:
    """409 while the volume is being made (journal record still ``creating``)."""
    found = await volumes.store.get(k)  # the cache: no round trip
    if k in volumes._making or (found is not None and found[0].get("creating")):
        raise Conflict(f"{what} is being made; try again when its create has ended")


_readers: dict[str, int] = {}
READING = "being copied"


@contextmanager
def reading(volumes: Volumes, k: str, what: str) -> Iterator[None]:
    """Hold volume ``k`` for reading (a copy's source): any number of copies may read it
    at once, while a delete, restore or snapshot of it is a 409."""
    if _readers.get(k):
        _readers[k] += 1
    else:
        if k in volumes.busy:
            raise Conflict(f"{what} is {volumes.busy[k]}; try again when that has ended")
        volumes.busy[k] = READING
        _readers[k] = 1
    try:
        yield
    finally:
        _readers[k] -= 1
        if not _readers[k]:
            del _readers[k]
            volumes.busy.pop(k, None)


@asynccontextmanager
async def held(volumes: Volumes, req: VolumeRequest, doing: str
               ) -> AsyncIterator[tuple[Driver, str]]:
    """The pool's driver and the volume's disk name, the volume held for ``doing``."""
    check_kind(req.kind, SNAPSHOT_KINDS)
    validate_name("volume", req.name)
    disk = validate_name("volume", disk_name(req.project, req.name))
    async with volumes.pools.using(req.pool) as drv:
        k = volumes.key(req.pool, req.kind, req.project, req.name)
        async with _locks.setdefault(k, asyncio.Lock()):
            await refuse_unfinished(volumes, k, label(req))
            with volumes.holding(k, doing, label(req)):
                yield drv, disk


async def create(volumes: Volumes, req: VolumeSnapshotRequest) -> Path:
    check_snapshot_name(req.snapshot)
    async with held(volumes, req, "being snapshotted") as (drv, disk):
        return await asyncio.to_thread(drv.create_snapshot, req.kind, disk, req.snapshot)


async def delete(volumes: Volumes, req: VolumeSnapshotRequest) -> None:
    check_snapshot_name(req.snapshot)
    async with held(volumes, req, "losing a snapshot") as (drv, disk):
        await asyncio.to_thread(drv.delete_snapshot, req.kind, disk, req.snapshot)


async def rename(volumes: Volumes, req: VolumeSnapshotRenameRequest) -> Path:
    check_snapshot_name(req.snapshot)
    check_snapshot_name(req.new_snapshot)
    async with held(volumes, req, "renaming a snapshot") as (drv, disk):
        return await asyncio.to_thread(drv.rename_snapshot, req.kind, disk, req.snapshot,
                                       req.new_snapshot)


async def restore(volumes: Volumes, req: VolumeSnapshotRequest) -> Path:
    """The volume's content becomes the snapshot's (quota kept); the caller stops the
    instance first. The path is unchanged."""
    check_snapshot_name(req.snapshot)
    async with held(volumes, req, "being restored") as (drv, disk):
        await asyncio.to_thread(drv.restore_snapshot, req.kind, disk, req.snapshot)
        volumes._usage_cache.pop((req.pool, req.kind, disk, ""), None)
        return drv.volume_path(req.kind, disk)


async def listing(volumes: Volumes, req: VolumeRequest) -> list[str]:
    check_kind(req.kind, SNAPSHOT_KINDS)
    disk = validate_name("volume", disk_name(req.project, req.name))
    async with volumes.pools.using(req.pool) as drv:
        return await asyncio.to_thread(drv.list_snapshots, req.kind, disk)


async def path(volumes: Volumes, req: VolumePathRequest) -> tuple[Path, bool]:
    """Where a volume or its snapshot ``req.snapshot`` is, and whether it exists."""
    if req.snapshot is None:
        return await volumes.path(req)
    check_kind(req.kind, SNAPSHOT_KINDS)
    check_snapshot_name(req.snapshot)
    async with volumes.pools.using(req.pool) as drv:
        p = drv.snapshot_path(req.kind, disk_name(req.project, req.name), req.snapshot)
        return p, p.is_dir()


async def clean_tmp(volumes: Volumes) -> None:
    """At start: empty every available pool's tmp dir (what a killed restore, snapshot or
    copy was making or dropping; nothing there is ever in use after a restart)."""
    for rec in volumes.pools.records():
        if rec["name"] in volumes.pools.unavailable:
            continue
        try:
            async with volumes.pools.using(rec["name"]) as drv:
                gone = await asyncio.to_thread(drv.clean_tmp)
        except Exception as exc:  # one bad pool must not keep the service down
            log.warning("could not empty a pool's tmp dir", pool=rec["name"], error=str(exc))
            continue
        if gone:
            log.warning("removed what an interrupted operation left", pool=rec["name"],
                        entries=len(gone))
