"""New volumes on this node that do not come from an image: ``volume_create`` (empty) and
``volume_copy`` (from another volume or snapshot, same pool or another, with snapshots).

Both are journaled exactly like ``Volumes.from_image``: the record is written first with
``creating`` (it reserves the name, 409 for another caller), the volume is made, then the
record is rewritten whole. A failure removes what was made and the record; a process
killed mid-way leaves a ``creating`` record (``journal`` says which verb) that
:func:`reconcile` removes at the next start with whatever exists of the volume and its
snapshots. ``request_id`` makes a repeat (a lost answer) get the same volume.

``refresh`` (the target exists) needs no journal: each snapshot it adds appears whole
(see ``Driver.copy_in``) and the content is swapped in one rename, as a restore.

Engineers of other areas may call :func:`create_volume` and :func:`copy_volume` directly
(custom volumes, imports): they only need the service's :class:`Volumes`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from shared import faults
from shared.errors import BadRequest, Conflict, NotFound, Unavailable
from shared.log import get_logger
from shared.messages.storage import VolumeCopyRequest, VolumeCreateRequest

from . import images, snapshots
from .drivers import Driver
from .drivers.base import SNAPSHOT_KINDS
from .drivers.util import parse_size, validate_name
from .volumes import Volumes, check_kind, disk_name

JOURNALS = ("copy", "create")
log = get_logger(component="storage")


# ---- the journal ---------------------------------------------------------------------------


async def journaled(volumes: Volumes, drv: Driver, req: Any, rec: dict[str, Any],
                    journal: str, make: Callable[[], Path]) -> Path:
    """Reserve the name with a ``creating`` record, run ``make`` in a thread, then write
    the record whole; undo everything on failure (see the module docstring)."""
    disk = disk_name(req.project, req.name)
    k = volumes.key(req.pool, req.kind, req.project, req.name)
    what = f"Storage volume {req.kind}/{req.name}"
    if k in volumes._making:
        if req.request_id:
            return await volumes.same_request(drv, k, req, disk)
        raise Conflict(f"{what} is being made")
    making = asyncio.get_running_loop().create_future()
    volumes._making[k] = making
    try:
        await volumes.store.create(k, {**rec, "creating": True, "journal": journal},
                                   f"{what} in pool {req.pool!r}")
    except BaseException as exc:
        volumes._making.pop(k, None)
        making.cancel()
        if isinstance(exc, Conflict) and req.request_id:
            return await volumes.same_request(drv, k, req, disk)
        if isinstance(exc, Conflict):
            raise Conflict(f"{what} already exists in pool {req.pool!r}") from None
        raise
    if os.path.lexists(drv.volume_path(req.kind, disk)):  # on disk, no record: not ours
        volumes._making.pop(k, None)
        making.cancel()
        await volumes.store.delete(k)
        raise Conflict(f"{what} already exists in pool {req.pool!r}")
    try:
        path = await asyncio.to_thread(make)
        faults.point(f"storage:{journal}_done")
        await volumes.store.put(k, rec)
        making.set_result(path)
        return path
    except BaseException as exc:
        making.set_exception(exc if isinstance(exc, Exception) else
                             Unavailable("The storage service is stopping"))
        making.exception()  # read here: a repeat may never come to read it
        await volumes.forget_half_made(drv, k, req.kind, disk)
        raise
    finally:
        volumes._making.pop(k, None)


async def reconcile(volumes: Volumes) -> int:
    """At start: remove what a killed create or copy made (records still ``creating``
    with a ``journal`` of this module), before ``Volumes.reconcile`` sees them."""
    removed = 0
    for rec in list(volumes.store.cached()):
        if not rec.get("creating") or rec.get("journal") not in JOURNALS \
                or rec["pool"] in volumes.pools.unavailable:
            continue
        project, kind = rec.get("project", "default"), rec["kind"]
        disk = disk_name(project, rec["name"])
        try:
            async with volumes.pools.using(rec["pool"]) as drv:
                await asyncio.to_thread(drv.drop_volume, kind, disk)
                await volumes.store.delete(volumes.key(rec["pool"], kind, project,
                                                       rec["name"]))
        except Exception as exc:
            log.warning("could not remove an interrupted volume", pool=rec["pool"],
                        volume=disk, error=str(exc))
            continue
        log.warning(f"removed a volume whose {rec['journal']} was interrupted",
                    pool=rec["pool"], kind=kind, volume=disk)
        removed += 1
    return removed


# ---- volume_create -------------------------------------------------------------------------


async def create_volume(volumes: Volumes, req: VolumeCreateRequest,
                        extra: dict[str, Any] | None = None) -> Path:
    """An empty volume: a directory/subvolume, or for ``block`` one holding a sparse
    ``root.img`` of ``size`` bytes (as LXD's dir driver lays block volumes out).
    ``extra`` goes into the record (config, description... of a custom volume)."""
    check_kind(req.kind, SNAPSHOT_KINDS)
    validate_name("volume", req.name)
    disk = validate_name("volume", disk_name(req.project, req.name))
    if req.content_type == "block":
        if not req.size:
            raise BadRequest("A block volume needs a 'size' (e.g. '10GiB')")
        size = parse_size(req.size, "size")
        if size <= 0:
            raise BadRequest(f"Invalid value {req.size!r} for 'size': must be more than 0")
    elif req.size:
        parse_size(req.size, "size")
    async with volumes.pools.using(req.pool) as drv:
        rec = volumes._record(req.pool, req.kind, req.project, req.name,
                              content_type=req.content_type, request_id=req.request_id,
                              **(extra or {}))

        def make() -> Path:
            if req.content_type == "block":
                path = drv.create_empty_volume(req.kind, disk)
                with open(path / "root.img", "xb") as fh:
                    fh.truncate(size)
                return path
            return drv.create_empty_volume(req.kind, disk, req.size or None)

        return await journaled(volumes, drv, req, rec, "create", make)


# ---- volume_copy ---------------------------------------------------------------------------


def _carried(src_rec: dict[str, Any] | None, same_pool: bool) -> dict[str, Any]:
    """What the copy's record keeps of the source's: description, config, content type;
    a dir pool's VM overlay keeps its image (``source_fingerprint``, ``overlay``) while it
    stays in the pool, so deleting that image is still refused; elsewhere it is flattened."""
    if src_rec is None:
        return {}
    out = {k: src_rec[k] for k in ("description", "config", "content_type")
           if k in src_rec}
    if src_rec.get("source_fingerprint"):
        out["source_fingerprint"] = src_rec["source_fingerprint"]
        out["overlay"] = bool(src_rec.get("overlay")) and same_pool
    return out


async def copy_volume(volumes: Volumes, req: VolumeCopyRequest) -> Path:
    """``volume_copy``: see :class:`shared.messages.storage.VolumeCopyRequest`."""
    check_kind(req.kind, SNAPSHOT_KINDS)
    validate_name("volume", req.name)
    validate_name("volume", req.source_name)
    disk = validate_name("volume", disk_name(req.project, req.name))
    src_disk = validate_name("volume", disk_name(req.source_project, req.source_name))
    if req.source_snapshot is not None:
        snapshots.check_snapshot_name(req.source_snapshot)
    for s in req.snapshots:
        snapshots.check_snapshot_name(s)
    if len(set(req.snapshots)) != len(req.snapshots):
        raise BadRequest("'snapshots' names a snapshot twice")
    same = (req.pool, req.project, req.name) == (req.source_pool, req.source_project,
                                                 req.source_name)
    if same:
        raise BadRequest("A volume cannot be copied onto itself")
    src_k = volumes.key(req.source_pool, req.kind, req.source_project, req.source_name)
    src_label = f"Storage volume {req.kind}/{req.source_name}"
    async with AsyncExitStack() as stack:
        src_drv = await stack.enter_async_context(volumes.pools.using(req.source_pool))
        drv = src_drv if req.pool == req.source_pool else \
            await stack.enter_async_context(volumes.pools.using(req.pool))
        await snapshots.refuse_unfinished(volumes, src_k, src_label)
        if not src_drv.volume_path(req.kind, src_disk).is_dir():
            raise NotFound(f"{src_label} not found in pool {req.source_pool!r}")
        # The source stays put while it is read (a delete or restore of it is a 409).
        stack.enter_context(snapshots.reading(volumes, src_k, src_label))
        found = await volumes.store.get(src_k)
        src_rec = found[0] if found else None
        backing = None
        if src_rec and src_rec.get("overlay") and req.pool != req.source_pool:
            backing = src_drv.volume_path("image", images.check_fingerprint(
                src_rec["source_fingerprint"])) / "rootfs.img"

        def make(refresh: bool = False) -> Path:
            return drv.copy_in(req.kind, disk, src_drv, src_disk, req.source_snapshot,
                               req.snapshots, refresh=refresh, backing=backing)

        if req.refresh:
            k = volumes.key(req.pool, req.kind, req.project, req.name)
            if not drv.volume_path(req.kind, disk).is_dir():
                raise NotFound(f"Storage volume {req.kind}/{req.name} not found in pool "
                               f"{req.pool!r}")
            await snapshots.refuse_unfinished(volumes, k, f"Storage volume {req.kind}/"
                                              f"{req.name}")
            with volumes.holding(k, "being refreshed", f"Storage volume {req.kind}/"
                                                       f"{req.name}"):
                path = await asyncio.to_thread(make, True)
            volumes._usage_cache.pop((req.pool, req.kind, disk, ""), None)
            return path
        rec = volumes._record(req.pool, req.kind, req.project, req.name,
                              request_id=req.request_id,
                              **_carried(src_rec, req.pool == req.source_pool))
        return await journaled(volumes, drv, req, rec, "copy", make)

