"""Custom storage volumes: records in ``storage_volumes`` (kind ``custom``), data through
the pool's driver (:mod:`.custom_disk`), users found in the instance service.

A record is ``{pool, kind: "custom", project, name, description, config, content_type,
created_at, snapshots: {name: {description, created_at, expires_at}}}``. Making, copying
and snapshotting go through the storage verbs' own functions (:mod:`.copies`,
:mod:`.snapshots`): a new volume's record says ``creating`` until it is whole (written
before anything is made, so two callers cannot race for a name; the service's start
removes what a dead process left). Snapshot metadata lives in the volume's record; the
snapshot directories on disk are the truth for which snapshots exist (a crash between the
disk and the record shows a snapshot without its description, never a record without
data).

``used_by`` is asked of the instance service (instances whose expanded devices, and
profiles whose devices, hold a disk ``{pool: <pool>, source: <volume>}``), as LXD's
``storagePoolVolumeUsedByGet``: the volume's own project first, default's for projects
without ``features.storage.volumes``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.api import check_etag, etag, url
from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.filters import compile_filter
from shared.log import get_logger
from shared.messages.storage import (
    VolumeCopyRequest,
    VolumeCreateRequest,
    VolumeRenameRequest,
    VolumeRequest,
    VolumeSnapshotRenameRequest,
    VolumeSnapshotRequest,
)
from shared.models import ListRequest, ObjectRequest, lxd_time
from shared.restrictions import check_snapshot_creation, snapshots_allowed

from . import copies, custom_disk, custom_users, snapshots
from .backups import BACKUPS_DIR
from .custom_config import (
    ZERO_TIME,
    check_config,
    check_content_type,
    format_time,
    next_snapshot_name,
    parse_time,
    schedule_due,
    snapshot_expiry,
    time_order,
)
from .drivers import Driver
from .drivers.util import validate_name
from .pools import Pools
from .volumes import Volumes, disk_name, volume_url

KIND = "custom"
log = get_logger(component="storage")


def volume_etag(rec: dict[str, Any]) -> str:
    """LXD hashes name, type and config for a volume's ETag."""
    return etag(rec["name"], KIND, rec.get("config", {}))


def snapshot_url(pool: str, name: str, snap: str, project: str) -> str:
    base = volume_url(pool, KIND, name, "default")
    out = f"{base}/snapshots/{snap}"
    return out if project == "default" else f"{out}?project={project}"


class CustomVolumes:
    def __init__(self, volumes: Volumes, pools: Pools, bus: Bus) -> None:
        self.volumes = volumes
        self.pools = pools
        self.bus = bus
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, k: str) -> asyncio.Lock:
        """One writer of a volume's record at a time (its snapshots' metadata)."""
        return self._locks.setdefault(k, asyncio.Lock())

    # ---- records -------------------------------------------------------------------------

    def key(self, pool: str, project: str, name: str) -> str:
        return self.volumes.key(pool, KIND, project, name)

    async def record(self, pool: str, project: str, name: str) -> dict[str, Any]:
        """The volume's record (404 when there is none, or while it is being made). A
        volume on disk without a record (made by hand, or before a KV loss) is listed,
        so it answers too, as a fresh record: the host is the truth."""
        await self.pools.get(pool)
        found = await self.volumes.store.get(self.key(pool, project, name))
        if found is not None and not found[0].get("creating"):
            return dict(found[0])
        if found is None and "/" not in name:
            async with self.pools.using(pool) as drv:
                path = drv.volume_path(KIND, validate_name("volume", disk_name(project,
                                                                               name)))
                if path.is_dir():
                    block = (path / custom_disk.BLOCK_FILE).is_file()
                    return self.volumes._record(
                        pool, KIND, project, name, snapshots={},
                        content_type="block" if block else "filesystem")
        raise NotFound(f"Storage volume not found: custom/{name} in pool {pool!r}")

    async def records(self, pool: str, project: str | None) -> list[dict[str, Any]]:
        """The pool's custom volumes (of ``project``, or of all), disk-only ones included."""
        vols = await self.volumes.listing(pool, KIND, project)
        return [v for v in vols if not v.get("creating")]

    @staticmethod
    def _label(name: str) -> str:
        return f"Storage volume custom/{name}"

    # ---- users ---------------------------------------------------------------------------

    async def users(self, recs: list[dict[str, Any]], strict: bool = False,
                    running: set[str] | None = None
                    ) -> dict[tuple[str, str, str], list[str]]:
        """``used_by`` of each record, keyed (pool, project, name): instances whose expanded
        devices and profiles whose devices hold a disk on the volume. ``strict``: an
        unanswered question is a 503 (deleting must not guess), else the list lacks them.
        ``running`` is filled with the URLs of the instances that run (or are frozen)."""
        out: dict[tuple[str, str, str], list[str]] = {
            (r["pool"], r.get("project", "default"), r["name"]): [] for r in recs}
        if not recs:
            return out
        try:
            inst = await self.bus.request("instance", "list",
                                          ListRequest(recursion=1, all_projects=True))
            profiles: list[dict[str, Any]] = []
            for project in sorted({r.get("project", "default") for r in recs}):
                reply = await self.bus.request("instance", "profile_list",
                                               ListRequest(recursion=1, project=project))
                profiles += [{**p, "project": p.get("project") or project}
                             for p in reply.metadata or []]
        except CorralError as exc:
            if strict:
                raise Unavailable(f"Cannot check what uses the volume (the instance service "
                                  f"does not answer: {exc.message}); try again") from exc
            log.debug("instances not included in a volume's used_by", error=exc.message)
            return out
        known = set(out)
        pools_of = {(r["pool"], r["name"]) for r in recs}

        def owner(pool: str, project: str, source: str) -> tuple[str, str, str] | None:
            for candidate in ((pool, project, source), (pool, "default", source)):
                if candidate in known:
                    return candidate
            return None

        def scan(devices: dict[str, Any], project: str, where: str) -> None:
            for dev in (devices or {}).values():
                if dev.get("type") != "disk" or not dev.get("pool") or not dev.get("source"):
                    continue
                source = dev["source"].removeprefix("custom/")  # LXD takes both forms
                if (dev["pool"], source) not in pools_of:
                    continue
                found = owner(dev["pool"], project, source)
                if found is not None and where not in out[found]:
                    out[found].append(where)

        for i in inst.metadata or []:
            project = i.get("project", "default")
            where = url("instances", i["name"], project)
            scan(i.get("expanded_devices") or i.get("devices") or {}, project, where)
            if running is not None and i.get("status") in ("Running", "Frozen"):
                running.add(where)
        for p in profiles:
            scan(p.get("devices") or {}, p["project"], url("profiles", p["name"],
                                                              p["project"]))
        return out

    # ---- the API's objects ---------------------------------------------------------------

    def public(self, rec: dict[str, Any], used_by: list[str]) -> dict[str, Any]:
        """LXD's StorageVolume object."""
        return {"config": rec.get("config", {}), "description": rec.get("description", ""),
                "name": rec["name"], "type": KIND, "used_by": sorted(used_by),
                "location": "none", "content_type": rec.get("content_type", "filesystem"),
                "project": rec.get("project", "default"),
                "created_at": rec.get("created_at", ZERO_TIME)}

    def snapshot_public(self, rec: dict[str, Any], snap: str) -> dict[str, Any]:
        """LXD's StorageVolumeSnapshot object."""
        meta = (rec.get("snapshots") or {}).get(snap, {})
        return {"name": snap, "description": meta.get("description", ""),
                "config": meta.get("config", rec.get("config", {})),
                "content_type": rec.get("content_type", "filesystem"),
                "created_at": meta.get("created_at", ZERO_TIME),
                "expires_at": meta.get("expires_at", ZERO_TIME)}

    async def snapshot_list(self, rec: dict[str, Any]) -> list[str]:
        """The volume's snapshots on disk (the truth), oldest first by their records."""
        async with self.pools.using(rec["pool"]) as drv:
            names = await asyncio.to_thread(custom_disk.snapshot_names, drv,
                                            self._disk(rec))
        meta = rec.get("snapshots") or {}
        return sorted(names, key=lambda s: (time_order(meta.get(s, {}).get("created_at")), s))

    @staticmethod
    def _disk(rec: dict[str, Any]) -> str:
        return disk_name(rec.get("project", "default"), rec["name"])

    async def listing(self, pool: str, project: str | None, recursion: int,
                      filter_: str | None = None) -> list[Any]:
        """``GET .../volumes/custom``: the volumes and, as LXD, their snapshots (named
        ``<volume>/<snapshot>``); ``filter_`` is LXD's ``filter=``."""
        recs = await self.records(pool, project)
        if filter_:
            match = compile_filter(filter_)
            objs = [o for o in await self.decorate(recs) if match(o)]
            if recursion > 0:
                return objs
            return [volume_url(pool, KIND, o["name"], o["project"]) for o in objs
                    if "/" not in o["name"]]
        if recursion <= 0:
            out: list[Any] = []
            for r in recs:
                out.append(volume_url(pool, KIND, r["name"], r.get("project", "default")))
            return out
        return await self.decorate(recs)

    async def decorate(self, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Public objects of ``recs`` with used_by, each followed by its snapshots."""
        users = await self.users(recs)
        snapshots_of = await self._snapshots_of(recs)
        out = []
        for r in recs:
            project = r.get("project", "default")
            obj = self.public(r, users.get((r["pool"], project, r["name"]), []))
            out.append(obj)
            for s in snapshots_of.get(self.key(r["pool"], project, r["name"]), []):
                out.append({**obj, **self.snapshot_public(r, s), "name": f"{r['name']}/{s}",
                            "type": KIND, "used_by": [], "project": project,
                            "location": "none"})
        return out

    async def _snapshots_of(self, recs: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Every record's snapshots (oldest first), read in one thread hop per pool: a
        listing of many volumes must not cost a hop each."""
        out: dict[str, list[str]] = {}
        for pool in sorted({r["pool"] for r in recs}):
            mine = [r for r in recs if r["pool"] == pool]
            try:
                async with self.pools.using(pool) as drv:
                    def read(drv: Driver = drv, mine: list = mine) -> list[list[str]]:
                        found = []
                        for r in mine:
                            try:
                                found.append(custom_disk.snapshot_names(drv, self._disk(r)))
                            except (CorralError, OSError):
                                found.append([])
                        return found
                    names = await asyncio.to_thread(read)
            except CorralError:
                continue  # an unavailable pool: its volumes are listed without snapshots
            for r, snaps in zip(mine, names, strict=True):
                meta = r.get("snapshots") or {}
                out[self.key(pool, r.get("project", "default"), r["name"])] = sorted(
                    snaps, key=lambda s, m=meta: (time_order(m.get(s, {}).get("created_at")),
                                                  s))
        return out

    async def get(self, pool: str, project: str, name: str) -> tuple[dict[str, Any], str]:
        rec = await self.record(pool, project, name)
        users = await self.users([rec])
        return self.public(rec, users[(pool, project, name)]), volume_etag(rec)

    # ---- create, update, delete ----------------------------------------------------------

    async def create(self, pool: str, project: str, name: str, description: str,
                     config: dict[str, str] | None, content_type: str | None
                     ) -> dict[str, Any]:
        """An empty volume, made whole or not at all (the storage verbs' journaled
        ``create_volume``: record ``creating`` first, removed again on failure)."""
        validate_name("volume", name)
        content_type = check_content_type(content_type)
        pool_rec, _rev = await self.pools.get(pool)
        config = check_config(config, pool_rec["driver"], content_type)
        rec = self._new_record(pool, project, name, description, config, content_type)
        req = VolumeCreateRequest(project=project, pool=pool, kind=KIND, name=name,
                                  size=config.get("size", ""), content_type=content_type)
        try:
            await copies.create_volume(self.volumes, req, extra={
                k: rec[k] for k in ("description", "config", "snapshots", "created_at")})
        except Conflict:
            raise Conflict("Volume by that name already exists") from None
        log.info("custom volume created", pool=pool, project=project, volume=name)
        return rec

    def _new_record(self, pool: str, project: str, name: str, description: str,
                    config: dict[str, str], content_type: str) -> dict[str, Any]:
        return {"pool": pool, "kind": KIND, "project": project, "name": name,
                "description": description or "", "config": config,
                "content_type": content_type, "created_at": lxd_time(), "snapshots": {}}

    async def update(self, pool: str, project: str, name: str, body: dict[str, Any],
                     etag_: str | None, patch: bool) -> None:
        """PUT (the whole writable state) or PATCH (given keys): ``size`` is applied at
        once (a quota, a longer block file) before the record changes; a ``restore``
        (PUT) comes first, as LXD."""
        rec = await self.record(pool, project, name)
        check_etag(etag_, volume_etag(rec))
        if body.get("restore"):
            await self.restore(pool, project, name, body["restore"])
            if body.get("config") is None and "description" not in body:
                return
            rec = await self.record(pool, project, name)
        if patch:
            config = {**rec.get("config", {}), **(body.get("config") or {})}
        else:
            config = dict(body.get("config") or {}) if body.get("config") is not None \
                else dict(rec.get("config", {}))
        pool_rec, _rev = await self.pools.get(pool)
        content_type = rec.get("content_type", "filesystem")
        if content_type == "block" and not config.get("size"):
            config["size"] = rec.get("config", {}).get("size", "")
        config = check_config(config, pool_rec["driver"], content_type)
        description = body.get("description")
        if description is None:
            description = rec.get("description", "") if patch else ""
        k = self.key(pool, project, name)
        old_size = rec.get("config", {}).get("size", "")
        async with self.pools.using(pool) as drv, self._lock(k):
            with self.volumes.holding(k, "being updated", self._label(name)):
                if config.get("size", "") != old_size:
                    await asyncio.to_thread(custom_disk.resize, drv, self._disk(rec),
                                            content_type, config.get("size", ""))
                current = await self.record(pool, project, name)
                await self.volumes.store.put(k, {**current, "config": config,
                                                 "description": description})

    async def delete(self, pool: str, project: str, name: str,
                     before: Callable[[dict[str, Any]], Awaitable[None]] | None = None
                     ) -> None:
        """Delete the volume and its snapshots; 400 while anything uses it (as LXD).
        ``before`` runs once it may go (its backups' frozen copies go first)."""
        rec = await self.record(pool, project, name)
        users = (await self.users([rec], strict=True))[(pool, project, name)]
        if users:
            raise BadRequest(f"The storage volume is still in use by {', '.join(users)}: "
                             "detach it first")
        if before is not None:
            await before(rec)
        await self.volumes.delete(VolumeRequest(project=project, pool=pool, kind=KIND,
                                                name=name))

    # ---- rename and move -----------------------------------------------------------------

    def _projects_with(self, pool: str, name: str) -> set[str]:
        """Projects with a custom volume ``name`` of their own in ``pool``."""
        return {r.get("project", "default") for r in self.volumes.store.cached()
                if r.get("kind") == KIND and r["pool"] == pool and r["name"] == name}

    async def _holders(self, pool: str, project: str, name: str
                       ) -> list[custom_users.Holder]:
        """Who names the volume in a device; 400 while a running instance uses it."""
        found, running = await custom_users.holders(
            self.bus, pool, project, name, self._projects_with(pool, name) - {project})
        if running:
            raise BadRequest(f"Volume is still in use by running instances: "
                             f"{', '.join(running)}; stop them first")
        return found

    async def rename(self, pool: str, project: str, name: str, new_name: str) -> None:
        """Rename in the pool (sync, as LXD): the devices of stopped instances and of
        profiles that name it follow; refused while a running instance uses it."""
        validate_name("volume", new_name)
        await self.record(pool, project, name)
        if await self.volumes.store.get(self.key(pool, project, new_name)) is not None:
            raise Conflict("Volume by that name already exists")
        found = await self._holders(pool, project, name)
        await self._rename_disk(pool, project, name, new_name)
        try:
            await custom_users.repoint(self.bus, found, pool, new_name)
        except BaseException:
            await self._rename_disk(pool, project, new_name, name)
            raise

    async def _rename_disk(self, pool: str, project: str, name: str, new_name: str
                           ) -> None:
        await self.volumes.rename(VolumeRenameRequest(pool=pool, kind=KIND, project=project,
                                                      name=name, new_name=new_name))
        async with self.pools.using(pool) as drv:  # its backups' frozen copies follow
            frozen = drv.path / BACKUPS_DIR / drv._kind_dir(KIND)
            old, new = frozen / disk_name(project, name), frozen / disk_name(project,
                                                                             new_name)
            if old.is_dir() and not os.path.lexists(new):
                os.rename(old, new)

    async def copy(self, pool: str, project: str, name: str, description: str | None,
                   config: dict[str, str] | None, src_pool: str, src_project: str,
                   src_name: str, volume_only: bool, content_type: str | None = None
                   ) -> dict[str, Any]:
        """A new volume from another (or from one of its snapshots, ``vol/snap``), with
        its snapshots unless ``volume_only``; in the same pool or across pools (the
        storage verbs' journaled ``copy_volume``), then the request's config applied."""
        validate_name("volume", name)
        parent, _, src_snap = src_name.partition("/")
        src = await self.record(src_pool, src_project, parent)
        src_snaps = await self.snapshot_list(src)
        if src_snap and src_snap not in src_snaps:
            raise NotFound(f"Storage volume snapshot not found: custom/{src_name} in pool "
                           f"{src_pool!r}")
        snaps = [] if (volume_only or src_snap) else src_snaps
        content = src.get("content_type", "filesystem")
        if content_type and content_type != content:
            raise BadRequest(f"Cannot copy a {content} volume into a {content_type} one")
        pool_rec, _rev = await self.pools.get(pool)
        cfg = dict(src.get("config", {}) if config is None else config)
        if content == "block" and not cfg.get("size"):
            cfg["size"] = src.get("config", {}).get("size", "")
        if pool_rec["driver"] == "dir" and content == "filesystem":
            cfg.pop("size", None)  # no quotas on dir: the copy keeps the data, not a limit
        cfg = check_config(cfg, pool_rec["driver"], content)
        rec = self._new_record(pool, project, name,
                               src.get("description", "") if description is None
                               else description, cfg, content)
        meta = src.get("snapshots") or {}
        rec["snapshots"] = {s: {**meta.get(s, {}), "created_at": meta.get(s, {}).get(
            "created_at", lxd_time())} for s in snaps}
        req = VolumeCopyRequest(project=project, pool=pool, kind=KIND, name=name,
                                source_project=src_project, source_pool=src_pool,
                                source_name=parent, source_snapshot=src_snap or None,
                                snapshots=snaps)
        try:
            await copies.copy_volume(self.volumes, req)
        except Conflict as exc:
            if "already exists" in exc.message:
                raise Conflict("Volume by that name already exists") from None
            raise
        k = self.key(pool, project, name)
        try:
            size = cfg.get("size", "")
            if size and size != (src.get("config") or {}).get("size", ""):
                async with self.pools.using(pool) as drv:
                    await asyncio.to_thread(custom_disk.resize, drv,
                                            disk_name(project, name), content, size)
            async with self._lock(k):
                current = await self.record(pool, project, name)
                await self.volumes.store.put(k, {**current, **rec})
        except BaseException:
            await self.volumes.delete(VolumeRequest(project=project, pool=pool, kind=KIND,
                                                    name=name))
            raise
        return rec

    async def refresh(self, pool: str, project: str, name: str, src_pool: str,
                      src_project: str, src_name: str, volume_only: bool) -> list[str]:
        """``copy --refresh``: the target gets the source's missing snapshots, then its
        content. Returns the snapshots added."""
        dst = await self.record(pool, project, name)
        src = await self.record(src_pool, src_project, src_name)
        snaps = [] if volume_only else await self.snapshot_list(src)
        before = set(await self.snapshot_list(dst))
        await copies.copy_volume(self.volumes, VolumeCopyRequest(
            project=project, pool=pool, kind=KIND, name=name, source_project=src_project,
            source_pool=src_pool, source_name=src_name, snapshots=snaps, refresh=True))
        added = [s for s in snaps if s not in before]
        k = self.key(pool, project, name)
        async with self._lock(k):
            current = await self.record(pool, project, name)
            meta = dict(current.get("snapshots") or {})
            for s in added:
                meta[s] = {**(src.get("snapshots") or {}).get(s, {})}
                meta[s].setdefault("created_at", lxd_time())
            await self.volumes.store.put(k, {**current, "snapshots": meta})
        return added

    async def move(self, pool: str, project: str, name: str, new_pool: str,
                   new_name: str,
                   before: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                   new_project: str | None = None) -> None:
        """To another pool: a copy with its snapshots, the devices naming it pointed at the
        copy, then the source goes (``before`` its deletion, as :meth:`delete`). Refused
        while a running instance uses it; any failure leaves the source as it was."""
        new_project = new_project or project
        rec = await self.record(pool, project, name)
        found = await self._holders(pool, project, name)
        if found and new_project != project:
            raise BadRequest(f"Storage volume custom/{name} is in use: detach it before "
                             "moving it to another project")
        await self.copy(new_pool, new_project, new_name, rec.get("description", ""),
                        dict(rec.get("config", {})), pool, project, name, False)
        changed: list[custom_users.Holder] = []
        try:
            changed = await custom_users.repoint(self.bus, found, new_pool, new_name)
            await self.delete(pool, project, name, before=before)
        except BaseException:
            await custom_users.restore(self.bus, changed)
            await self.volumes.delete(VolumeRequest(project=new_project, pool=new_pool,
                                                    kind=KIND, name=new_name))
            raise

    # ---- snapshots -----------------------------------------------------------------------

    async def snapshot_get(self, pool: str, project: str, name: str, snap: str
                           ) -> tuple[dict[str, Any], str]:
        rec = await self.record(pool, project, name)
        if snap not in await self.snapshot_list(rec):
            raise NotFound(f"Storage volume snapshot not found: custom/{name}/{snap}")
        obj = self.snapshot_public(rec, snap)
        return obj, etag(obj["description"], obj["expires_at"])

    def _snap_req(self, pool: str, project: str, name: str, snap: str
                  ) -> VolumeSnapshotRequest:
        return VolumeSnapshotRequest(project=project, pool=pool, kind=KIND, name=name,
                                     snapshot=snap)

    async def _edit_snapshots(self, pool: str, project: str, name: str, edit: Any) -> None:
        """Read-modify-write of the record's snapshot metadata, one writer at a time."""
        k = self.key(pool, project, name)
        async with self._lock(k):
            current = await self.record(pool, project, name)
            snaps = dict(current.get("snapshots") or {})
            edit(snaps)
            await self.volumes.store.put(k, {**current, "snapshots": snaps})

    async def snapshot_create(self, pool: str, project: str, name: str, snap: str,
                              expires_at: str, description: str = "") -> None:
        rec = await self.record(pool, project, name)
        req = self._snap_req(pool, project, name, snap)
        try:
            await snapshots.create(self.volumes, req)
        except Conflict as exc:
            if "already exists" in exc.message:
                raise Conflict(f"Snapshot {snap!r} already in use") from None
            raise
        try:
            config = dict(rec.get("config") or {})  # as it was when the snapshot was taken
            await self._edit_snapshots(pool, project, name, lambda m: m.__setitem__(snap, {
                "description": description, "created_at": lxd_time(),
                "expires_at": expires_at, "config": config}))
        except BaseException:
            await snapshots.delete(self.volumes, req)
            raise

    async def snapshot_delete(self, pool: str, project: str, name: str, snap: str) -> None:
        await self.record(pool, project, name)
        await snapshots.delete(self.volumes, self._snap_req(pool, project, name, snap))
        await self._edit_snapshots(pool, project, name, lambda m: m.pop(snap, None))

    async def snapshot_rename(self, pool: str, project: str, name: str, snap: str,
                              new: str) -> None:
        validate_name("snapshot", new)
        await self.record(pool, project, name)
        req = VolumeSnapshotRenameRequest(project=project, pool=pool, kind=KIND, name=name,
                                          snapshot=snap, new_snapshot=new)
        try:
            await snapshots.rename(self.volumes, req)
        except Conflict as exc:
            if "already exists" in exc.message:
                raise Conflict(f"Snapshot {new!r} already in use") from None
            raise
        await self._edit_snapshots(pool, project, name, lambda m: m.__setitem__(
            new, m.pop(snap, {"created_at": lxd_time()})))

    async def snapshot_update(self, pool: str, project: str, name: str, snap: str,
                              body: dict[str, Any], etag_: str | None, patch: bool) -> None:
        obj, tag = await self.snapshot_get(pool, project, name, snap)
        check_etag(etag_, tag)
        k = self.key(pool, project, name)
        current = await self.record(pool, project, name)
        snaps = dict(current.get("snapshots") or {})
        meta = dict(snaps.get(snap) or {"created_at": obj["created_at"]})
        if "description" in body or not patch:
            meta["description"] = body.get("description") or ""
        if body.get("expires_at") is not None or not patch:
            meta["expires_at"] = format_time(parse_time(body.get("expires_at")))
        snaps[snap] = meta
        await self.volumes.store.put(k, {**current, "snapshots": snaps})

    async def restore(self, pool: str, project: str, name: str, snap: str) -> None:
        """The volume's content replaced by the snapshot's; the volume is never missing,
        and its quota stays (the driver's restore swaps atomically). Refused while a
        running instance uses it (its mounted disk would change under it), as LXD."""
        rec = await self.record(pool, project, name)
        if snap not in await self.snapshot_list(rec):
            raise NotFound(f"Storage volume snapshot not found: custom/{name}/{snap}")
        up: set[str] = set()
        users = (await self.users([rec], strict=True, running=up))[(pool, project, name)]
        busy = [u for u in users if u in up]
        if busy:
            raise BadRequest(f"Storage volume custom/{name} is in use by running instances "
                             f"{', '.join(busy)}: stop them before restoring it")
        await snapshots.restore(self.volumes, self._snap_req(pool, project, name, snap))

    async def project_config(self, project: str) -> dict[str, str]:
        """The project's config, asked of the instance service that owns projects (the
        ``restricted.*`` keys a custom volume snapshot obeys); ``default`` has none."""
        if project == "default":
            return {}
        reply = await self.bus.request("instance", "project_get",
                                       ObjectRequest(project=project, name=project))
        return (reply.metadata or {}).get("config") or {}

    async def check_snapshot_allowed(self, project: str) -> None:
        """400 with LXD's message when the project blocks snapshots (``restricted``)."""
        check_snapshot_creation(project, await self.project_config(project))

    async def scheduled(self, last: datetime, now: datetime) -> list[tuple[dict, str]]:
        """Take the snapshots ``snapshots.schedule`` asks for in ``(last, now]``, named by
        ``snapshots.pattern`` and expiring by ``snapshots.expiry``; returns (record,
        snapshot) of those made (a failure is logged, the others still go)."""
        made = []
        for rec in list(self.volumes.store.cached()):
            cfg = rec.get("config") or {}
            if rec.get("kind") != KIND or rec.get("creating") or \
                    not cfg.get("snapshots.schedule") or \
                    not schedule_due(cfg["snapshots.schedule"], last, now):
                continue
            project = rec.get("project", "default")
            try:
                if not snapshots_allowed(await self.project_config(project)):
                    continue  # restricted.snapshots=block: skipped quietly, as LXD's task
                taken = set(await self.snapshot_list(rec))
                snap = next_snapshot_name(cfg.get("snapshots.pattern", ""), taken)
                await self.snapshot_create(rec["pool"], project, rec["name"], snap,
                                           snapshot_expiry(None, cfg, now))
            except CorralError as exc:
                log.warning("scheduled volume snapshot not taken", volume=rec["name"],
                            pool=rec["pool"], error=exc.message)
                continue
            made.append((rec, snap))
        return made

    def expired(self, field: str, now: datetime) -> list[tuple[dict[str, Any], str]]:
        """(record, name) of each custom volume's ``field`` entry (``snapshots`` or
        ``backups``) whose ``expires_at`` has passed; an entry whose time does not parse
        never expires (nothing is deleted on a guess)."""
        out = []
        for rec in list(self.volumes.store.cached()):
            if rec.get("kind") != KIND or rec.get("creating"):
                continue
            for name, meta in list((rec.get(field) or {}).items()):
                try:
                    when = parse_time(meta.get("expires_at"))
                except (BadRequest, TypeError, ValueError):
                    continue
                if when is not None and when <= now:
                    out.append((rec, name))
        return out

    async def prune_expired(self, now: datetime | None = None) -> list[str]:
        """Delete snapshots whose ``expires_at`` has passed (LXD's pruning task)."""
        gone = []
        for rec, snap in self.expired("snapshots", now or datetime.now(timezone.utc)):
            try:
                await self.snapshot_delete(rec["pool"], rec.get("project", "default"),
                                           rec["name"], snap)
            except CorralError as exc:
                log.warning("expired snapshot not removed", volume=rec["name"],
                            snapshot=snap, error=exc.message)
                continue
            gone.append(f"{rec['pool']}/{rec['name']}/{snap}")
        return gone

    def path(self, drv: Driver, rec: dict[str, Any]) -> Path:
        return drv.volume_path(KIND, self._disk(rec))
