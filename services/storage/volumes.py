"""Volumes: records in the ``storage_volumes`` KV bucket, data through the pool's driver.

A record is written *before* the volume is made (it reserves the name, so two callers
cannot race for it) and removed again if making it fails. Instance volumes remember the
image they came from (``source_fingerprint``), so deleting an image can tell whether a
driver's clones still depend on it. Image volumes are unpacked once per pool: one
asyncio lock per (pool, fingerprint) serializes everyone wanting the same image.

Why records say ``creating`` until the volume is whole: a process that dies while making a
volume leaves a record and maybe a half-made subvolume, and nobody got its path (the
answer died with the process). So at the next start (:meth:`Volumes.reconcile`) every
record still ``creating`` is the journal of an unfinished make: its volume is removed with
it, which frees the name for the caller's retry (an image volume is unpacked again).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared import faults
from shared.api import url
from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.log import get_logger
from shared.messages.storage import (
    VolumeFromImageRequest,
    VolumeQuotaRequest,
    VolumeRef,
    VolumeRenameRequest,
    VolumeRequest,
)
from shared.models import lxd_time
from shared.state import Store, key

from . import images
from .drivers import KINDS, Driver
from .drivers.util import validate_name
from .pools import Pools

INSTANCE_KINDS = ("container", "virtual-machine")
USAGE_TTL = 2.0  # seconds a volume's usage figure is reused (see Volumes.usage)
log = get_logger(component="storage")


def disk_name(project: str, name: str) -> str:
    """LXD's on-disk name: ``<project>_<name>`` outside the default project."""
    return name if project == "default" else f"{project}_{name}"


def volume_url(pool: str, kind: str, name: str, project: str = "default") -> str:
    return url(f"storage-pools/{quote(pool, safe='')}/volumes/{kind}", name, project)


def check_kind(kind: str, allowed: tuple[str, ...] = tuple(KINDS)) -> str:
    if kind not in allowed:
        raise BadRequest(f"Invalid volume type {kind!r}: expected one of {', '.join(allowed)}")
    return kind


def overlays_vms(drv: Driver) -> bool:
    """Whether VM volumes in this pool are qcow2 overlays on the image volume's disk
    instead of copies: pools without cheap copies (``optimized_images`` false: dir)."""
    return not drv.info().optimized_images


def make_vm_overlay(drv: Driver, name: str, fingerprint: str) -> Path:
    """A VM volume as a directory whose ``root.qcow2`` backs onto the image volume's
    ``rootfs.img`` (absolute path); the small rest (boot/, metadata) is copied."""
    import shutil
    import subprocess

    from shared.errors import Internal

    src = drv.volume_path("image", fingerprint)
    dst = drv.create_empty_volume("virtual-machine", name)
    try:
        for entry in src.iterdir():
            if entry.name == "rootfs.img":
                continue
            if entry.is_dir():
                shutil.copytree(entry, dst / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, dst / entry.name)
        res = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                              str(src / "rootfs.img"), str(dst / "root.qcow2")],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise Internal(f"qemu-img create failed: {res.stderr.strip()}")
    except BaseException:
        drv.delete_volume("virtual-machine", name)
        raise
    return dst


def dependent_clones(drv: Driver) -> bool:
    """Whether instance volumes still need their image volume (ZFS/LVM-thin clones do;
    btrfs snapshots and dir copies stand alone). Drivers may say so with a class flag."""
    return bool(getattr(type(drv), "dependent_clones", False))


class Volumes:
    def __init__(self, store: Store, pools: Pools, bus: Bus, corral_dir: Path) -> None:
        self.store = store
        self.pools = pools
        self.bus = bus
        self.tmp = corral_dir / "tmp"
        self._image_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Instance volumes being made by this process: a repeat of the request awaits the
        # first one's outcome instead of polling a record the first may fail to clear.
        self._making: dict[str, asyncio.Future[Path]] = {}
        # (pool, kind, disk name, snapshot or "") -> (when read, bytes)
        self._usage_cache: dict[tuple[str, str, str, str], tuple[float, int | None]] = {}
        # Volumes an operation holds right now (key -> "being deleted", "being restored"...):
        # a delete, rename, snapshot, restore or copy of a held volume is a 409, so none of
        # them sees another's half-done state (see :meth:`holding`).
        self.busy: dict[str, str] = {}

    @contextmanager
    def holding(self, k: str, what: str, label: str) -> Iterator[None]:
        """Hold volume ``k`` (its :meth:`key`) for an operation; 409 if another holds it."""
        if k in self.busy:
            raise Conflict(f"{label} is {self.busy[k]}; try again when that has ended")
        self.busy[k] = what
        try:
            yield
        finally:
            self.busy.pop(k, None)

    # ---- records -------------------------------------------------------------------------

    @staticmethod
    def key(pool: str, kind: str, project: str, name: str) -> str:
        return key(pool, kind, project, name)

    def in_pool(self, pool: str) -> list[dict[str, Any]]:
        return sorted((v for v in self.store.cached() if v["pool"] == pool),
                      key=lambda v: (v["kind"], v.get("project", "default"), v["name"]))

    def _record(self, pool: str, kind: str, project: str, name: str, **extra: Any
                ) -> dict[str, Any]:
        return {"pool": pool, "kind": kind, "project": project, "name": name,
                "description": "", "config": {}, "created_at": lxd_time(), **extra}

    def used_by(self, rec: dict[str, Any]) -> list[str]:
        """What a volume stands for in its pool's ``used_by``: its instance, its image, a
        custom volume itself (as LXD). A custom volume's own users are asked of the
        instance service (``custom.CustomVolumes.users``)."""
        if rec["kind"] in INSTANCE_KINDS:
            return [url("instances", rec["name"], rec.get("project", "default"))]
        if rec["kind"] == "image":
            return [url("images", rec["name"])]
        return [volume_url(rec["pool"], rec["kind"], rec["name"],
                           rec.get("project", "default"))]

    def public(self, rec: dict[str, Any]) -> dict[str, Any]:
        """LXD's StorageVolume object."""
        return {"config": rec.get("config", {}), "description": rec.get("description", ""),
                "name": rec["name"], "type": rec["kind"],
                "used_by": [] if rec["kind"] == "custom" else self.used_by(rec),
                "location": "none",
                "content_type": rec.get("content_type") or (
                    "block" if rec["kind"] == "virtual-machine" else "filesystem"),
                "project": rec.get("project", "default")}

    async def listing(self, pool: str, kind: str | None, project: str | None
                      ) -> list[dict[str, Any]]:
        """The pool's volumes: KV records plus volumes found on disk without one (the host
        is the truth; those show up in the default project)."""
        rec, _rev = await self.pools.get(pool)
        if kind is not None:
            check_kind(kind)
        recs = self.in_pool(pool)
        if pool not in self.pools.unavailable:
            drv = await self.pools.available(rec)
            known = {(v["kind"], disk_name(v.get("project", "default"), v["name"]))
                     for v in recs}
            for k, name in await asyncio.to_thread(drv.list_volumes):
                if (k, name) not in known:
                    recs.append(self._record(pool, k, "default", name))
        return [v for v in recs if (kind is None or v["kind"] == kind)
                and (project is None or v["kind"] == "image"
                     or v.get("project", "default") == project)]

    async def get(self, pool: str, kind: str, project: str, name: str) -> dict[str, Any]:
        for v in await self.listing(pool, check_kind(kind), project):
            if v["name"] == name:
                return v
        raise NotFound(f"Storage volume {kind}/{name} not found in pool {pool!r}")

    # ---- image volumes -------------------------------------------------------------------

    def _image_lock(self, pool: str, fingerprint: str) -> asyncio.Lock:
        return self._image_locks.setdefault((pool, fingerprint), asyncio.Lock())

    async def _ensure_image(self, drv: Driver, fingerprint: str) -> None:
        """Unpack the image into the pool unless it is there; the caller holds its lock."""
        k = self.key(drv.pool, "image", "default", fingerprint)
        if await asyncio.to_thread(drv.has_image_volume, fingerprint):
            if await self.store.get(k) is None:  # made before a crash: adopt it
                await self.store.put(k, self._record(drv.pool, "image", "default",
                                                     fingerprint))
            return
        await self.store.put(k, self._record(drv.pool, "image", "default", fingerprint,
                                             creating=True))
        try:
            async with images.fetched(self.bus, fingerprint, self.tmp) as (meta, rootfs,
                                                                           _type):
                await asyncio.to_thread(drv.create_image_volume, fingerprint,
                                        images.unpacker(meta, rootfs))
        except BaseException:
            await self.store.delete(k)
            raise
        log.info("image unpacked", pool=drv.pool, fingerprint=fingerprint)
        await self.store.put(k, self._record(drv.pool, "image", "default", fingerprint))

    async def from_image(self, req: VolumeFromImageRequest) -> Path:
        """An instance volume from an image; on failure neither it nor a half image stays."""
        check_kind(req.kind, INSTANCE_KINDS)
        validate_name("volume", req.name)
        fp = images.check_fingerprint(req.fingerprint)
        disk = validate_name("volume", disk_name(req.project, req.name))
        async with self.pools.using(req.pool) as drv:
            k = self.key(req.pool, req.kind, req.project, req.name)
            overlay = req.kind == "virtual-machine" and overlays_vms(drv)
            rec = self._record(req.pool, req.kind, req.project, req.name,
                               source_fingerprint=fp, overlay=overlay,
                               request_id=req.request_id)
            if k in self._making:  # being made here right now: a repeat, or a duplicate
                if req.request_id:
                    return await self.same_request(drv, k, req, disk)
                raise Conflict(f"Storage volume {req.kind}/{req.name} is being made")
            # Registered before the record exists, so a repeat never takes a record that
            # this process is making for a stale one.
            making = asyncio.get_running_loop().create_future()
            self._making[k] = making
            try:
                await self.store.create(k, {**rec, "creating": True},
                                        f"Storage volume {req.kind}/{req.name} in pool "
                                        f"{req.pool!r}")
            except BaseException as exc:
                self._making.pop(k, None)
                making.cancel()
                if isinstance(exc, Conflict) and req.request_id:  # made before: a repeat
                    return await self.same_request(drv, k, req, disk)
                raise
            faults.point("storage:after_record")
            try:
                async with self._image_lock(req.pool, fp):
                    await self._ensure_image(drv, fp)
                    if overlay:
                        path = await asyncio.to_thread(make_vm_overlay, drv, disk, fp)
                    else:
                        path = await asyncio.to_thread(drv.create_instance_from_image, disk,
                                                       fp, req.kind)
                faults.point("storage:after_volume")
                await self.store.put(k, rec)
                making.set_result(path)
                return path
            except BaseException as exc:
                making.set_exception(exc if isinstance(exc, Exception) else
                                     Unavailable("The storage service is stopping"))
                making.exception()  # read here: a repeat may never come to read it
                await self.forget_half_made(drv, k, req.kind, disk)
                raise
            finally:
                self._making.pop(k, None)

    async def forget_half_made(self, drv: Driver, k: str, kind: str, disk: str) -> None:
        """Remove whatever exists of a volume whose making failed (its snapshots too),
        then its record (best effort: what stays is removed by the next repeat of the
        request or by the sweep at start)."""
        try:
            await asyncio.to_thread(drv.drop_volume, kind, disk)
        except Exception as exc:
            log.warning("could not remove a half-made volume", volume=disk, error=str(exc))
        try:
            await self.store.delete(k)
        except Exception as exc:  # the bus went away: the record says "creating" still
            log.warning("could not forget a half-made volume", volume=disk, error=str(exc))

    async def same_request(self, drv: Driver, k: str, req: Any, disk: str,
                           wait: float = 600.0) -> Path:
        """A make (``volume_from_image``, a copy, a create) sent again because its answer
        was lost: the same volume, once the first request has made it, or the error it
        ended with; 409 if the name is another request's. A record still "creating" that
        no task of this process makes was left by a making that failed while the bus was
        away: it is removed, and the repeat answers 503 (the caller undoes its part; the
        name is free again). ``req`` has ``pool``, ``kind``, ``name``, ``request_id``."""
        what = f"Storage volume {req.kind}/{req.name}"
        first = self._making.get(k)
        if first is not None:
            return await asyncio.shield(first)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found = await self.store.get(k)
            if found is None or found[0].get("request_id") != req.request_id:
                raise Conflict(f"{what} already exists in pool {req.pool!r}")
            if not found[0].get("creating"):
                return drv.volume_path(req.kind, disk)
            if k not in self._making:
                await self.forget_half_made(drv, k, req.kind, disk)
                raise Unavailable(f"Making {what} was interrupted (the message bus "
                                  "restarted); try again")
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict(f"{what} is still being made")
            await asyncio.sleep(0.1)

    async def delete_image(self, fingerprint: str) -> list[str]:
        """Drop an image's volume from every pool; 409 (nothing deleted) while a driver's
        clones depend on it. Unavailable pools are skipped (logged)."""
        fp = images.check_fingerprint(fingerprint)
        users = [v for v in self.store.cached() if v.get("source_fingerprint") == fp]
        targets = []
        for rec in self.pools.records():
            name = rec["name"]
            if name in self.pools.unavailable:
                log.warning("image volume left on unavailable pool", pool=name, fingerprint=fp)
                continue
            drv = await self.pools.available(rec)
            deps = [v["name"] for v in users if v["pool"] == name]
            if any(v.get("overlay") for v in users if v["pool"] == name) or (
                    deps and dependent_clones(drv)):
                raise Conflict(f"Image {fp} is still used by instance volumes "
                               f"{', '.join(deps)} in pool {name!r}")
            targets.append(name)
        done = []
        for name in targets:
            async with self.pools.using(name) as drv, self._image_lock(name, fp):
                if await asyncio.to_thread(drv.has_image_volume, fp):
                    await asyncio.to_thread(drv.delete_image_volume, fp)
                    done.append(name)
                await self.store.delete(self.key(name, "image", "default", fp))
        return done

    # ---- any volume ----------------------------------------------------------------------

    async def path(self, req: VolumeRequest) -> tuple[Path, bool]:
        check_kind(req.kind)
        async with self.pools.using(req.pool) as drv:
            path = drv.volume_path(req.kind, disk_name(req.project, req.name))
            return path, path.is_dir()

    async def usage(self, refs: list[VolumeRef]) -> list[int | None]:
        """Bytes used by each volume (None: unknown), read in one thread hop.

        Why a cache: ``lxc list`` refreshes ask for every instance each time; qgroup
        numbers move only at a btrfs commit anyway, so a figure USAGE_TTL seconds old is
        as good and a burst of listings reads the disk once. A missing pool or volume is
        None, not an error: a listing must not fail because one instance is half-made."""
        now = time.monotonic()
        out: list[int | None] = [None] * len(refs)
        todo: list[tuple[int, Driver, str, tuple[str, str, str, str]]] = []
        pools = {r["name"]: r for r in self.pools.records()}
        for i, ref in enumerate(refs):
            k = (ref.pool, ref.kind, disk_name(ref.project, ref.name), ref.snapshot or "")
            hit = self._usage_cache.get(k)
            if hit is not None and now - hit[0] < USAGE_TTL:
                out[i] = hit[1]
                continue
            rec = pools.get(ref.pool)
            if rec is None:
                continue
            try:
                drv = await self.pools.available(rec)
            except CorralError:
                continue
            todo.append((i, drv, ref.kind, k))

        def read() -> list[int | None]:
            found = []
            for _i, drv, kind, k in todo:
                try:
                    found.append(drv.volume_usage(kind, k[2], k[3] or None))
                except (CorralError, OSError):
                    found.append(None)
            return found

        for (i, _drv, _kind, k), value in zip(todo, await asyncio.to_thread(read),
                                              strict=True):
            out[i] = value
            self._usage_cache[k] = (now, value)
        return out

    async def set_quota(self, req: VolumeQuotaRequest) -> None:
        """Limit an existing volume's size (an instance's root disk ``size``)."""
        check_kind(req.kind)
        async with self.pools.using(req.pool) as drv:
            await asyncio.to_thread(drv.set_quota, req.kind,
                                    disk_name(req.project, req.name), req.size or None)

    async def delete(self, req: VolumeRequest) -> None:
        """Delete a volume (and its snapshots): the disk part and the record."""
        check_kind(req.kind)
        async with self.pools.using(req.pool) as drv:
            k = self.key(req.pool, req.kind, req.project, req.name)
            path = drv.volume_path(req.kind, disk_name(req.project, req.name))
            if await self.store.get(k) is None and not os.path.lexists(path):
                raise NotFound(f"Storage volume {req.kind}/{req.name} not found in pool "
                               f"{req.pool!r}")
            lock = self._image_lock(req.pool, req.name) if req.kind == "image" else None
            if lock:
                await lock.acquire()
            try:
                with self.holding(k, "being deleted", f"Storage volume {req.kind}/{req.name}"):
                    if os.path.lexists(path):
                        await asyncio.to_thread(drv.delete_volume, req.kind,
                                                disk_name(req.project, req.name))
                    await self.store.delete(k)
            finally:
                if lock:
                    lock.release()

    async def rename(self, req: VolumeRenameRequest) -> Path:
        """Rename within a pool and project; the new name is reserved first (409)."""
        check_kind(req.kind, ("container", "virtual-machine", "custom"))
        validate_name("volume", req.new_name)
        async with self.pools.using(req.pool) as drv:
            old_k = self.key(req.pool, req.kind, req.project, req.name)
            new_k = self.key(req.pool, req.kind, req.project, req.new_name)
            found = await self.store.get(old_k)
            old_path = drv.volume_path(req.kind, disk_name(req.project, req.name))
            if found is None and not old_path.is_dir():
                raise NotFound(f"Storage volume {req.kind}/{req.name} not found in pool "
                               f"{req.pool!r}")
            rec = dict(found[0]) if found else self._record(req.pool, req.kind, req.project,
                                                             req.name)
            if old_k in self.busy:
                raise Conflict(f"Storage volume {req.kind}/{req.name} is {self.busy[old_k]}")
            await self.store.create(new_k, {**rec, "name": req.new_name},
                                    f"Storage volume {req.kind}/{req.new_name}")
            try:
                path = await asyncio.to_thread(drv.rename_volume, req.kind,
                                               disk_name(req.project, req.name),
                                               disk_name(req.project, req.new_name))
            except BaseException:
                await self.store.delete(new_k)
                raise
            await self.store.delete(old_k)
            return path

    async def reconcile(self) -> int:
        """On start: remove what a dead process was making (records still ``creating``,
        with their volumes); returns how many. Unavailable pools wait for the next start."""
        removed = 0
        for rec in list(self.store.cached()):
            if not rec.get("creating") or rec["pool"] in self.pools.unavailable:
                continue
            project, kind = rec.get("project", "default"), rec["kind"]
            disk = rec["name"] if kind == "image" else disk_name(project, rec["name"])
            try:
                async with self.pools.using(rec["pool"]) as drv:
                    if os.path.lexists(drv.volume_path(kind, disk)):
                        await asyncio.to_thread(drv.delete_volume, kind, disk)
                    await self.store.delete(self.key(rec["pool"], kind, project, rec["name"]))
            except Exception as exc:  # keep going: one bad volume must not keep the rest
                log.warning("could not remove an interrupted volume", pool=rec["pool"],
                            volume=disk, error=str(exc))
                continue
            log.warning("removed a volume whose making was interrupted", pool=rec["pool"],
                        kind=kind, volume=disk)
            removed += 1
        return removed

    async def forget_pool(self, pool: str) -> None:
        for v in self.in_pool(pool):
            await self.store.delete(self.key(pool, v["kind"], v.get("project", "default"),
                                             v["name"]))
