"""Backups of custom volumes in LXD's volume backup format (``lxc storage volume
export/import``): ``backup/index.yaml``, ``backup/volume/`` and
``backup/volume-snapshots/<s>/``.

Made with the pieces the instance backups use: :func:`.backups.freeze` keeps the volume
and its snapshots as they are at backup time (btrfs: read-only snapshots, no copy; dir:
the export reads the live volume), :class:`shared.backup.writer.TarStream` writes the
tarball while it is downloaded (no tarball on disk), :func:`.backups.import_volume` makes
a volume and its snapshots from a staged upload, whole or not at all. A backup's record
lives in its volume's record (``backups: {name: {...}}``), as its snapshots do.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from shared import blobs, streams
from shared.backup import layout, optimized, reader
from shared.backup.writer import TarStream
from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.log import get_logger
from shared.messages.backup import (
    VolumeBackupFreezeRequest,
    VolumeBackupImportRequest,
    VolumeBackupRenameRequest,
    VolumeBackupReply,
    VolumeBackupRequest,
)
from shared.messages.lxd import LxdBody
from shared.models import lxd_time

from . import backups, custom_disk
from .custom import KIND, CustomVolumes
from .custom_config import ZERO_TIME, check_config, format_time, parse_time, time_order
from .drivers.util import validate_name
from .volumes import disk_name

SWEEP_GRACE = 60.0  # seconds: a younger unrecorded frozen copy may be a backup in the making
log = get_logger(component="storage")


class BackupsPost(LxdBody):
    """LXD's StoragePoolVolumeBackupsPost."""

    name: Optional[str] = None
    expires_at: Optional[str] = None
    volume_only: Optional[bool] = None
    optimized_storage: Optional[bool] = None
    compression_algorithm: Optional[str] = None


def public(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """LXD's StoragePoolVolumeBackup."""
    return {"name": name, "created_at": meta.get("created_at", ZERO_TIME),
            "expires_at": meta.get("expires_at", ZERO_TIME),
            "volume_only": bool(meta.get("volume_only")),
            "optimized_storage": bool(meta.get("optimized_storage"))}


class CustomBackups:
    def __init__(self, custom: CustomVolumes, bus: Bus) -> None:
        self.custom = custom
        self.bus = bus

    def _req(self, rec: dict[str, Any], backup: str, snaps: list[str]
             ) -> VolumeBackupRequest:
        return VolumeBackupRequest(project=rec.get("project", "default"), pool=rec["pool"],
                                   kind=KIND, name=rec["name"], backup=backup,
                                   snapshots=snaps)

    async def listing(self, pool: str, project: str, name: str) -> list[tuple[str, dict]]:
        rec = await self.custom.record(pool, project, name)
        metas = rec.get("backups") or {}
        return sorted(metas.items(),
                      key=lambda kv: (time_order(kv[1].get("created_at")), kv[0]))

    async def get(self, pool: str, project: str, name: str, backup: str) -> dict[str, Any]:
        rec = await self.custom.record(pool, project, name)
        meta = (rec.get("backups") or {}).get(backup)
        if meta is None:
            raise NotFound(f"Storage volume backup not found: {name}/{backup}")
        return meta

    async def prepare(self, pool: str, project: str, name: str, body: BackupsPost
                      ) -> tuple[str, dict[str, Any]]:
        """Checks before the operation starts: the backup's name and record."""
        rec = await self.custom.record(pool, project, name)
        taken = set(rec.get("backups") or {})
        backup = body.name or next(f"backup{i}" for i in range(len(taken) + 1)
                                   if f"backup{i}" not in taken)
        validate_name("backup", backup)
        if "/" in backup:
            raise BadRequest("Backup names may not contain '/'")
        if backup in taken:
            raise Conflict(f"Backup {backup!r} already exists")
        pool_rec, _rev = await self.custom.pools.get(pool)
        if body.optimized_storage and pool_rec["driver"] != "btrfs":
            raise BadRequest(f"Optimized storage (btrfs send streams) needs a btrfs pool; "
                             f"{pool!r} is {pool_rec['driver']}: export without "
                             "--optimized-storage")
        meta = {"created_at": lxd_time(),
                "expires_at": format_time(parse_time(body.expires_at)),
                "volume_only": bool(body.volume_only),
                "optimized_storage": bool(body.optimized_storage),
                "compression_algorithm": layout.check_compression(
                    body.compression_algorithm)}
        return backup, meta

    async def create(self, pool: str, project: str, name: str, backup: str,
                     meta: dict[str, Any]) -> None:
        """Freeze the volume (and its snapshots unless volume_only), then record it."""
        rec = await self.custom.record(pool, project, name)
        snaps = [] if meta["volume_only"] else await self.custom.snapshot_list(rec)
        req = VolumeBackupFreezeRequest(**self._req(rec, backup, snaps).model_dump())
        await backups.freeze(self.custom.volumes, req)
        try:
            await self._edit(pool, project, name, lambda m: m.__setitem__(
                backup, {**meta, "snapshots": snaps}))
        except BaseException:
            await backups.delete(self.custom.volumes, req)
            raise

    async def _edit(self, pool: str, project: str, name: str, edit: Any) -> None:
        k = self.custom.key(pool, project, name)
        async with self.custom._lock(k):
            current = await self.custom.record(pool, project, name)
            metas = dict(current.get("backups") or {})
            edit(metas)
            await self.custom.volumes.store.put(k, {**current, "backups": metas})

    async def delete(self, pool: str, project: str, name: str, backup: str) -> None:
        meta = await self.get(pool, project, name, backup)
        rec = await self.custom.record(pool, project, name)
        await backups.delete(self.custom.volumes,
                             self._req(rec, backup, meta.get("snapshots") or []))
        await self._edit(pool, project, name, lambda m: m.pop(backup, None))

    async def drop_all(self, rec: dict[str, Any]) -> None:
        """A volume about to go: its backups' frozen copies go first."""
        for backup, meta in (rec.get("backups") or {}).items():
            await backups.delete(self.custom.volumes,
                                 self._req(rec, backup, meta.get("snapshots") or []))

    async def rename(self, pool: str, project: str, name: str, backup: str, new: str
                     ) -> None:
        validate_name("backup", new)
        meta = await self.get(pool, project, name, backup)
        rec = await self.custom.record(pool, project, name)
        if new in (rec.get("backups") or {}):
            raise Conflict(f"Backup {new!r} already exists")
        req = VolumeBackupRenameRequest(**self._req(rec, backup, []).model_dump(),
                                        new_backup=new)
        await backups.rename(self.custom.volumes, req)
        await self._edit(pool, project, name, lambda m: m.__setitem__(new, m.pop(backup,
                                                                                 meta)))

    async def prune_expired(self, now: datetime | None = None) -> list[str]:
        """Delete backups whose ``expires_at`` has passed."""
        gone = []
        for rec, backup in self.custom.expired("backups", now or datetime.now(timezone.utc)):
            try:
                await self.delete(rec["pool"], rec.get("project", "default"), rec["name"],
                                  backup)
            except CorralError as exc:
                log.warning("expired volume backup not removed", volume=rec["name"],
                            backup=backup, error=exc.message)
                continue
            gone.append(f"{rec['pool']}/{rec['name']}/{backup}")
        return gone

    async def sweep_frozen(self) -> list[str]:
        """At start: frozen copies no backup record names (a process killed between
        freezing and recording a backup) are removed; nothing else is running then."""
        wanted = {(r["pool"], disk_name(r.get("project", "default"), r["name"]), b)
                  for r in self.custom.volumes.store.cached() if r.get("kind") == KIND
                  for b in (r.get("backups") or {})}
        gone = []
        for prec in self.custom.pools.records():
            if prec["name"] in self.custom.pools.unavailable:
                continue
            try:
                async with self.custom.pools.using(prec["name"]) as drv:
                    top = drv.path / backups.BACKUPS_DIR / drv._kind_dir(KIND)
                    found = [(d.name, b.name) for d in (top.iterdir() if top.is_dir() else [])
                             for b in d.iterdir()] if top.is_dir() else []
                    for disk, backup in found:
                        root = top / disk / backup
                        if (prec["name"], disk, backup) in wanted or \
                                time.time() - root.stat().st_mtime < SWEEP_GRACE:
                            continue  # recorded, or maybe a backup being made right now
                        await asyncio.to_thread(backups._drop_tree, drv, root)
                        if not any((top / disk).iterdir()):
                            (top / disk).rmdir()
                        gone.append(f"{prec['name']}/{disk}/{backup}")
            except (CorralError, OSError) as exc:
                log.warning("frozen volume backups not swept", pool=prec["name"],
                            error=str(exc))
        return gone

    # ---- export --------------------------------------------------------------------------

    async def export(self, pool: str, project: str, name: str, backup: str, sid: str
                     ) -> str:
        """Start sending the tarball on stream ``sid``; returns its file name."""
        meta = await self.get(pool, project, name, backup)
        rec = await self.custom.record(pool, project, name)
        snaps = meta.get("snapshots") or []
        vol = await backups.get(self.custom.volumes, self._req(rec, backup, snaps))
        info = self.index(rec, vol, snaps, bool(meta.get("optimized_storage")))
        await streams.start_download(
            self.bus, sid, lambda emit: write(emit, meta["compression_algorithm"], vol, info),
            log.bind(volume=info["name"]), "volume backup export")
        return f"backup{layout.COMPRESSIONS[meta['compression_algorithm']]}"

    def index(self, rec: dict[str, Any], vol: VolumeBackupReply, snaps: list[str],
              optimized: bool = False) -> dict[str, Any]:
        """``backup/index.yaml`` as LXD 5.0 writes it for a custom volume."""
        if optimized and not vol.frozen:
            raise BadRequest("An optimized backup needs the volume frozen on btrfs")
        volume = self.custom.public(rec, [])
        return {"name": rec["name"], "backend": vol.driver, "pool": rec["pool"],
                "snapshots": snaps, "optimized": optimized, "optimized_header": optimized,
                "type": KIND,
                "config": {"volume": volume,
                           "volume_snapshots": [self.custom.snapshot_public(rec, s)
                                                for s in snaps]}}

    # ---- import --------------------------------------------------------------------------

    async def read_index(self, obj: str) -> dict[str, Any]:
        """The staged upload's index.yaml, checked (400 for anything but a custom volume
        backup)."""
        store = await blobs.transfers(self.bus)
        src = reader.ObjectReader(store, obj).start()
        try:
            raw = await asyncio.to_thread(lambda: reader.read_index(reader.open_tar(src)))
        finally:
            await src.close_async()
        info = layout.parse_index(raw)
        if info["type"] != KIND:
            raise BadRequest(f"Invalid backup: a {info['type']} backup, not a custom volume's "
                             "(import it with lxc import)")
        return info

    async def import_(self, pool: str, project: str, obj: str, name: str,
                      info: dict[str, Any]) -> dict[str, Any]:
        """A volume and its snapshots from the staged upload ``obj``; its config, content
        type, description and snapshot metadata from index.yaml."""
        name = name or info["name"]
        validate_name("volume", name)
        pool_rec, _rev = await self.custom.pools.get(pool)
        vol = (info["config"].get("volume") or {}) if isinstance(
            info["config"].get("volume"), dict) else {}
        content = vol.get("content_type") or "filesystem"
        config = dict(vol.get("config") or {})
        if pool_rec["driver"] == "dir" and content == "filesystem":
            config.pop("size", None)  # dir has no quotas: the data comes, not a limit
        config = check_config(config, pool_rec["driver"], content)
        if await self.custom.volumes.store.get(self.custom.key(pool, project, name)):
            raise Conflict("Volume by that name already exists")
        snaps = info["snapshots"]
        await backups.import_volume(self.custom.volumes, self.bus, VolumeBackupImportRequest(
            project=project, pool=pool, kind=KIND, name=name, object=obj, snapshots=snaps,
            optimized=info["optimized"]))
        metas = {s.get("name"): s for s in info["config"].get("volume_snapshots") or []
                 if isinstance(s, dict)}
        rec = self.custom._new_record(pool, project, name, vol.get("description") or "",
                                      config, content)
        rec["snapshots"] = {s: {"description": str(metas.get(s, {}).get("description") or ""),
                                "created_at": _time_or(metas.get(s, {}).get("created_at"),
                                                       lxd_time()),
                                "expires_at": _time_or(metas.get(s, {}).get("expires_at"),
                                                       ZERO_TIME),
                                "config": {str(k): str(v) for k, v in (metas.get(s, {}).get(
                                    "config") or {}).items()}}
                            for s in snaps}
        k = self.custom.key(pool, project, name)
        try:
            if config.get("size") and (content == "block" or pool_rec["driver"] != "dir"):
                async with self.custom.pools.using(pool) as drv:
                    await asyncio.to_thread(custom_disk.resize, drv, disk_name(project, name),
                                            content, config["size"])
            async with self.custom._lock(k):
                current, _rev = await self.custom.volumes.store.require(k, "Volume")
                await self.custom.volumes.store.put(k, {**current, **rec})
        except BaseException:
            from shared.messages.storage import VolumeRequest

            await self.custom.volumes.delete(VolumeRequest(project=project, pool=pool,
                                                           kind=KIND, name=name))
            raise
        return rec


def _time_or(value: Any, default: str) -> str:
    """A time from index.yaml (YAML makes datetimes of them) in LXD's format; ``default``
    when it is unset, zero or not a time."""
    try:
        ts = parse_time(value)
    except BadRequest:
        return default
    return default if ts is None else format_time(ts)


def write(emit: Any, compression: str, vol: VolumeBackupReply, info: dict[str, Any]) -> None:
    """The whole tarball in LXD's order: index.yaml, the snapshots (oldest first), the
    volume. Blocking: runs in a worker thread."""
    tar = TarStream(emit, compression)
    try:
        tar.add_bytes(layout.INDEX, layout.dump(info))
        sdir = layout.snapshots_dir(KIND)
        if info["optimized"]:
            optimized.write(tar, Path(vol.path), [(s, Path(vol.snapshot_paths[s]))
                                                   for s in info["snapshots"]],
                            layout.volume_dir(KIND), layout.snapshots_dir(KIND))
        else:
            for s in info["snapshots"]:
                tar.add_tree(Path(vol.snapshot_paths[s]), f"{layout.PREFIX}/{sdir}/{s}")
            tar.add_tree(Path(vol.path), f"{layout.PREFIX}/{layout.volume_dir(KIND)}")
        tar.close()
    except BaseException:
        tar.abort()
        raise



