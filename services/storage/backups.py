"""Volume backups on this node: freezing a volume for a backup, and making a volume from
a backup tarball (LXD's format, plain trees or btrfs send streams).

Freezing: a backup must not cost a full copy of the instance on disk (LXD users lose
exports to full disks). On btrfs a backup is a set of read-only subvolume snapshots under
``<pool>/.corral-backups/<kind-dir>/<disk name>/<backup>/`` (``volume`` and
``snapshots/<s>``): no data is copied, and the tarball is generated from them while it is
downloaded. A dir pool has no cheap copy: nothing is frozen and the export reads the live
volume (what LXD's dir driver reads too, only LXD writes the tarball to disk first).

Import: the tarball is read once, as a stream, from the ``transfers`` object store (where
the gateway staged the upload). Snapshot trees go straight into their snapshot volumes
(made, filled, then made read-only), the volume's tree into the volume; send streams go
through ``btrfs receive`` into scratch space on the pool and are moved into place. The
volume's record says ``creating`` until all of it is there, so a crash is cleaned at the
next start (:meth:`Volumes.reconcile`); any failure removes what was made.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
from pathlib import Path

from shared import blobs, faults
from shared.backup import btrfs as btrfs_send
from shared.backup import layout, reader, staged, vmdisk
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

from .drivers import Driver
from .drivers.util import validate_name
from .volumes import Volumes, check_kind, disk_name

BACKUPS_DIR = ".corral-backups"
log = get_logger(component="storage")


def _frozen(drv: Driver) -> bool:
    return drv.name == "btrfs"


def backup_root(drv: Driver, kind: str, disk: str, backup: str) -> Path:
    return (drv.path / BACKUPS_DIR / drv._kind_dir(kind) / validate_name("volume", disk)
            / validate_name("backup", backup))


async def _reply(vols: Volumes, drv: Driver, req: VolumeBackupRequest, frozen: bool
                 ) -> VolumeBackupReply:
    disk = disk_name(req.project, req.name)
    if frozen:
        root = backup_root(drv, req.kind, disk, req.backup)
        path = root / "volume"
        snaps = {s: str(root / "snapshots" / s) for s in req.snapshots}
    else:
        path = drv.volume_path(req.kind, disk)
        snaps = {s: str(drv.snapshot_path(req.kind, disk, s)) for s in req.snapshots}
    rec, _rev = await vols.pools.get(req.pool)
    vol = {"config": {}, "description": "", "name": req.name, "type": req.kind,
           "used_by": [], "location": "none",
           "content_type": "block" if req.kind == "virtual-machine" else "filesystem",
           "project": req.project, "created_at": "0001-01-01T00:00:00Z"}
    found = await vols.store.get(vols.key(req.pool, req.kind, req.project, req.name))
    if found:
        vol.update(config=found[0].get("config") or {},
                   description=found[0].get("description", ""))
    return VolumeBackupReply(frozen=frozen, path=str(path), snapshot_paths=snaps,
                             driver=drv.name, pool=vols.pools.public(rec, []), volume=vol)


async def freeze(vols: Volumes, req: VolumeBackupFreezeRequest) -> VolumeBackupReply:
    """Keep the volume (and ``snapshots``) as they are now for the backup."""
    check_kind(req.kind, ("container", "virtual-machine", "custom"))
    validate_name("backup", req.backup)
    disk = disk_name(req.project, req.name)
    async with vols.pools.using(req.pool) as drv:
        src = drv.volume_path(req.kind, disk)
        if not src.is_dir():
            raise NotFound(f"Storage volume {req.kind}/{req.name} not found in pool "
                           f"{req.pool!r}")
        for s in req.snapshots:
            if not drv.snapshot_path(req.kind, disk, s).is_dir():
                raise NotFound(f"Snapshot {req.name}/{s} not found in pool {req.pool!r}")
        reply = await _reply(vols, drv, req, _frozen(drv))
        if _frozen(drv):
            root = backup_root(drv, req.kind, disk, req.backup)
            text = None
            if req.backup_config is not None:
                text = layout.dump({**req.backup_config, "pool": reply.pool,
                                    "volume": reply.volume}).decode()
            await asyncio.to_thread(_freeze_btrfs, drv, root, src, req, disk, text)
        return reply


def _freeze_btrfs(drv: Driver, root: Path, src: Path, req: VolumeBackupFreezeRequest,
                  disk: str, backup_yaml: str | None) -> None:
    if os.path.lexists(root):
        raise Conflict(f"Backup {req.name}/{req.backup} already exists in pool {req.pool!r}")
    (root / "snapshots").mkdir(mode=0o700, parents=True)
    try:
        for s in req.snapshots:
            drv._vol_copy(drv.snapshot_path(req.kind, disk, s), root / "snapshots" / s,
                          readonly=True)
        vol = root / "volume"
        drv._vol_copy(src, vol, readonly=backup_yaml is None)
        if backup_yaml is not None:  # written into the copy, then it is made read-only
            target = vol / layout.BACKUP_YAML
            target.unlink(missing_ok=True)
            target.write_text(backup_yaml)
            target.chmod(0o400)
            drv._vol_freeze(vol)
    except BaseException:
        _drop_tree(drv, root)
        raise


def _drop_tree(drv: Driver, root: Path) -> None:
    """Remove a backup's frozen copies (best effort per subvolume, then the dirs)."""
    if not root.is_dir():
        return
    for snap in sorted((root / "snapshots").glob("*")) if (root / "snapshots").is_dir() \
            else []:
        drv._vol_delete(snap)
    if os.path.lexists(root / "volume"):
        drv._vol_delete(root / "volume")
    shutil.rmtree(root, ignore_errors=True)


async def get(vols: Volumes, req: VolumeBackupRequest) -> VolumeBackupReply:
    check_kind(req.kind, ("container", "virtual-machine", "custom"))
    async with vols.pools.using(req.pool) as drv:
        disk = disk_name(req.project, req.name)
        frozen = _frozen(drv)
        if frozen and not backup_root(drv, req.kind, disk, req.backup).is_dir():
            raise NotFound(f"Backup {req.name}/{req.backup} has no frozen volume in pool "
                           f"{req.pool!r}")
        if not frozen and not drv.volume_path(req.kind, disk).is_dir():
            raise NotFound(f"Storage volume {req.kind}/{req.name} not found in pool "
                           f"{req.pool!r}")
        return await _reply(vols, drv, req, frozen)


async def delete(vols: Volumes, req: VolumeBackupRequest) -> None:
    check_kind(req.kind, ("container", "virtual-machine", "custom"))
    async with vols.pools.using(req.pool) as drv:
        root = backup_root(drv, req.kind, disk_name(req.project, req.name), req.backup)
        await asyncio.to_thread(_drop_tree, drv, root)


async def rename(vols: Volumes, req: VolumeBackupRenameRequest) -> None:
    check_kind(req.kind, ("container", "virtual-machine", "custom"))
    validate_name("backup", req.new_backup)
    async with vols.pools.using(req.pool) as drv:
        disk = disk_name(req.project, req.name)
        new_disk = disk_name(req.project, req.new_name or req.name)
        old = backup_root(drv, req.kind, disk, req.backup)
        new = backup_root(drv, req.kind, new_disk, req.new_backup)
        if old.is_dir():
            if os.path.lexists(new):
                raise Conflict(f"Backup {req.new_name or req.name}/{req.new_backup} "
                               "already exists")
            new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(old, new)
            if not any(old.parent.iterdir()):
                old.parent.rmdir()


# ---- import -------------------------------------------------------------------------------


async def import_volume(vols: Volumes, bus: Bus, req: VolumeBackupImportRequest) -> Path:
    """The volume and its snapshots from a staged backup tarball; whole or nothing."""
    check_kind(req.kind, ("container", "virtual-machine", "custom"))
    disk = validate_name("volume", disk_name(req.project, req.name))
    for s in req.snapshots:
        validate_name("snapshot", s)
    if not req.object and not req.directory:
        raise BadRequest("A volume import needs a staged tarball or directory")
    # a migration's received trees on this node: read in place, no tarball uploaded
    stage = staged.checked(bus.config.dir, req.directory) if req.directory else None
    store = await blobs.bucket(bus, req.bucket) if stage is None else None
    async with vols.pools.using(req.pool) as drv:
        if req.optimized and drv.name != "btrfs":
            raise BadRequest(f'Optimized backup storage driver "btrfs" differs from the '
                             f'target storage pool driver "{drv.name}": import it into a '
                             "btrfs pool, or export it again without --optimized-storage")
        k = vols.key(req.pool, req.kind, req.project, req.name)
        rec = vols._record(req.pool, req.kind, req.project, req.name,
                           request_id=req.request_id)
        # The instance service sends a long import again every 10 s it stays unanswered
        # (remote.watched): a repeat waits for the first one's volume, as a copy's does.
        if req.request_id:
            found = await vols.store.get(k)
            if k in vols._making or (found and found[0].get("request_id") == req.request_id):
                return await vols.same_request(drv, k, req, disk)
        if os.path.lexists(drv.volume_path(req.kind, disk)):
            raise Conflict(f"Storage volume {req.kind}/{req.name} already exists in pool "
                           f"{req.pool!r}")
        making = asyncio.get_running_loop().create_future()
        vols._making[k] = making  # before the record: a repeat never takes it for stale
        try:
            await vols.store.create(k, {**rec, "creating": True},
                                    f"Storage volume {req.kind}/{req.name} in pool "
                                    f"{req.pool!r}")
        except BaseException:
            vols._making.pop(k, None)
            making.cancel()
            raise
        try:
            if stage is not None:
                await asyncio.to_thread(_unpack_staged, drv, stage, req, disk)
            else:
                src = reader.ObjectReader(store, req.object).start()
                try:
                    await asyncio.to_thread(_unpack, drv, src, req, disk)
                finally:
                    await src.close_async()
            faults.point("import:after_volume")
            await vols.store.put(k, rec)
        except BaseException as exc:
            making.set_exception(exc if isinstance(exc, Exception) else
                                 CorralError("The storage service is stopping", 503))
            making.exception()  # read here: a repeat may never come to read it
            await asyncio.shield(_undo_import(vols, drv, k, req.kind, disk))
            raise
        finally:
            vols._making.pop(k, None)
        path = drv.volume_path(req.kind, disk)
        making.set_result(path)
        return path


async def _undo_import(vols: Volumes, drv: Driver, k: str, kind: str, disk: str) -> None:
    try:
        await asyncio.to_thread(_remove_all, drv, kind, disk)
    except Exception as exc:  # the record stays "creating": reconcile retries at start
        log.warning("could not remove a half-imported volume", volume=disk, error=str(exc))
        return
    await vols.store.delete(k)


def _remove_all(drv: Driver, kind: str, disk: str) -> None:
    snaps = drv._snap_root(kind, disk)
    if snaps.is_dir():
        for s in sorted(snaps.iterdir()):
            drv._vol_delete(s)
        snaps.rmdir()
    if os.path.lexists(drv.volume_path(kind, disk)):
        drv._vol_delete(drv.volume_path(kind, disk))


def _unpack(drv: Driver, src: io.RawIOBase, req: VolumeBackupImportRequest,
            disk: str) -> None:
    """One pass over the tarball (blocking): trees and send streams into place."""
    tar = reader.open_tar(src)
    vol_path = drv.volume_path(req.kind, disk)
    snap_root = drv._snap_root(req.kind, disk)
    tmp = drv._tmp_path() if req.optimized else None
    made: set[str] = set()  # "" for the volume, else the snapshot's name
    disks: set[str] = set()  # VMs: those whose raw disk was read
    vdir = layout.volume_dir(req.kind)
    sdir = layout.snapshots_dir(req.kind)
    current: str | None = None

    def seal(which: str | None) -> None:
        """A snapshot tree is complete when the next part of the tarball starts."""
        if which not in (None, ""):
            drv._vol_freeze(drv.snapshot_path(req.kind, disk, which))

    def ensure(which: str) -> Path:
        if which in made:
            return vol_path if which == "" else drv.snapshot_path(req.kind, disk, which)
        if which == "":
            drv._vol_create(vol_path)
            made.add("")
            return vol_path
        snap_root.mkdir(mode=0o711, exist_ok=True)
        path = drv.snapshot_path(req.kind, disk, which)
        drv._vol_create(path)
        made.add(which)
        return path

    try:
        try:
            for member in tar:
                where = layout.member_target(member.name, req.kind, req.snapshots)
                if where is None:
                    continue
                part, rel = where
                if part == "bin":
                    if not req.optimized:
                        raise BadRequest("Invalid backup: a btrfs send stream in a backup "
                                         "index.yaml says is not optimized")
                    _receive(drv, tar, member, tmp, req, disk, rel, made)
                    continue
                if req.optimized:
                    raise BadRequest(f"Invalid backup: {member.name[:200]!r} in an "
                                     "optimized backup")
                which = rel if part == "img" else "" if part == "volume" else \
                    part.split(":", 1)[1]
                if which != current:
                    seal(current)
                    current = which
                if part == "img":  # a VM's raw disk: its qcow2, after its tree
                    _vm_disk(tar, member, ensure(which), disks, which)
                    continue
                if which == "" and rel == layout.BACKUP_YAML:
                    continue  # LXD's own record of the instance: ours is in KV
                dest = ensure(which)
                prefix = f"{layout.PREFIX}/{vdir}" if which == "" else \
                    f"{layout.PREFIX}/{sdir}/{which}"
                if which and rel == layout.BACKUP_YAML:
                    continue
                if req.kind == "virtual-machine" and rel.split("/")[0] in vmdisk.DISK_FILES:
                    continue  # the disk comes from the .img member only (never a link)
                reader.extract(tar, member, dest, rel, dest, prefix)
            seal(current)
        except (tarfile.TarError, EOFError, reader.zlib_error()) as exc:
            raise BadRequest(f"Invalid backup: the tarball is damaged ({exc})") from None
        except OSError as exc:
            if exc.errno == 28:
                raise CorralError(f"Storage pool {req.pool!r} is full: {exc}", 507) from None
            raise
        missing = [s for s in req.snapshots if s not in made]
        if "" not in made:
            raise BadRequest(f"Invalid backup: no backup/{vdir} in the tarball")
        if req.kind == "virtual-machine":
            missing += [f"{vdir}.img" if s == "" else f"{sdir}/{s}.img"
                        for s in ["", *req.snapshots] if s not in disks]
            if missing:
                raise BadRequest(f"Invalid backup: no disk image {', '.join(missing)} in "
                                 "the tarball")
        if missing:
            raise BadRequest(f"Invalid backup: snapshots {', '.join(missing)} are in "
                             "index.yaml but not in the tarball")
    except BaseException:
        if tmp is not None and tmp.exists():
            _drop_scratch(drv, tmp)
        raise
    if tmp is not None and tmp.exists():
        _drop_scratch(drv, tmp)


def _unpack_staged(drv: Driver, stage: Path, req: VolumeBackupImportRequest,
                   disk: str) -> None:
    """A staged directory: its trees renamed into place when a volume of this pool is a
    plain directory on the staging's filesystem (a move between cluster members on dir
    pools: no byte copied, xattrs kept as rsync wrote them); else through the same one
    pass (and checks) as a tarball."""
    if _adopt(drv, stage, req, disk):
        return
    with staged.stream(stage, req.kind, list(req.snapshots)) as raw:
        _unpack(drv, raw, req, disk)


def _adopt(drv: Driver, stage: Path, req: VolumeBackupImportRequest, disk: str) -> bool:
    """The staged trees become the volume and its snapshots by rename (False: not
    possible here, nothing done). As the tarball's import: each top is the pool's (root,
    0711), LXD's ``backup.yaml`` at a top is dropped, a missing part is a 400."""
    base = stage / layout.PREFIX
    vdir, sdir = layout.volume_dir(req.kind), layout.snapshots_dir(req.kind)
    parts = [("", base / vdir)] + [(s, base / sdir / s) for s in req.snapshots]
    vol_path = drv.volume_path(req.kind, disk)
    if drv.name != "dir" or req.optimized or req.kind != "container" \
            or not all(os.path.isdir(src) and not os.path.islink(src) for _, src in parts) \
            or os.stat(base).st_dev != os.stat(vol_path.parent).st_dev:
        return False
    try:
        if req.snapshots:
            drv._snap_root(req.kind, disk).mkdir(mode=0o711, exist_ok=True)
        for snap, src in parts[1:] + parts[:1]:  # the volume last: it says "whole"
            dst = vol_path if snap == "" else drv.snapshot_path(req.kind, disk, snap)
            top = src / layout.BACKUP_YAML
            if os.path.lexists(top) and not os.path.isdir(top):
                top.unlink()  # LXD's own record of the instance: ours is in KV
            os.chown(src, 0, 0, follow_symlinks=False)
            src.chmod(0o711)
            os.rename(src, dst)
            if snap:
                drv._vol_freeze(dst)
    except OSError as exc:
        if exc.errno == 28:
            raise CorralError(f"Storage pool {req.pool!r} is full: {exc}", 507) from None
        raise
    return True


def _vm_disk(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, disks: set[str],
             which: str) -> None:
    """LXD's raw ``.img`` of a VM volume or snapshot, as the ``root.qcow2`` the QEMU
    driver expects (standalone: no backing file)."""
    f = tar.extractfile(member)
    if f is None or which in disks:
        raise BadRequest(f"Invalid backup: {member.name[:200]!r} is not a single file")
    vmdisk.write_qcow2(f.read, member.size, dest)
    disks.add(which)


def _receive(drv: Driver, tar: tarfile.TarFile, member: tarfile.TarInfo, tmp: Path | None,
             req: VolumeBackupImportRequest, disk: str, snap: str, made: set[str]) -> None:
    """A send stream received in scratch space, then snapshotted to where the pool keeps
    it: a snapshot read-only, the volume writable."""
    assert tmp is not None
    f = tar.extractfile(member)
    if f is None:
        raise BadRequest(f"Invalid backup: {member.name[:200]!r} is not a file")
    scratch = tmp / (snap or "_volume")
    scratch.mkdir(parents=True)
    got = btrfs_send.receive(scratch, f.read)
    # Copies (snapshots: read-only, the volume: writable); the received subvolumes stay
    # in scratch space until the end: a later incremental stream finds its parent by the
    # received UUID, which only they carry. Extents are shared, nothing is copied.
    # The top's mode is the pool's (unprivileged roots traverse it), not LXD's 0100.
    if snap:
        drv._snap_root(req.kind, disk).mkdir(mode=0o711, exist_ok=True)
        dst = drv.snapshot_path(req.kind, disk, snap)
    else:
        dst = drv.volume_path(req.kind, disk)
    drv._vol_copy(got, dst)
    dst.chmod(0o711)
    if snap:
        drv._vol_freeze(dst)
    made.add(snap)


def _drop_scratch(drv: Driver, tmp: Path) -> None:
    for sub in sorted(tmp.iterdir()):
        for got in sorted(sub.iterdir()):
            try:
                drv._vol_delete(got)
            except CorralError:
                pass
    shutil.rmtree(tmp, ignore_errors=True)
