"""The disk side of custom volumes (blocking; the service runs these in a thread).

A filesystem volume is the pool's plain volume (a directory on dir, a subvolume on
btrfs); its ``size`` is a quota (btrfs qgroup). A block volume is the same directory
holding one sparse file, ``root.img``, of ``size`` bytes (LXD's layout for block volumes
on dir and btrfs), which a VM attaches as a disk. Snapshots use the driver's snapshot
layout (``custom-snapshots/<volume>/<snapshot>``).

Each function leaves nothing half made: what it made is removed again when it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import BadRequest, Conflict, NotFound

from .drivers import Driver
from .drivers.util import parse_size, run

KIND = "custom"
BLOCK_FILE = "root.img"


def make(drv: Driver, disk: str, content_type: str, size: str) -> Path:
    """A new empty volume: a quota'd subvolume/directory, or a sparse ``root.img``."""
    if content_type == "block":
        path = drv.create_empty_volume(KIND, disk)
        try:
            with open(path / BLOCK_FILE, "wb") as fh:
                fh.truncate(parse_size(size, "size"))
            os.chmod(path / BLOCK_FILE, 0o600)
        except BaseException:
            drv.delete_volume(KIND, disk)
            raise
        return path
    return drv.create_empty_volume(KIND, disk, size or None)


def resize(drv: Driver, disk: str, content_type: str, size: str) -> None:
    """Apply a new ``size`` at once: the quota of a filesystem volume ("" lifts it), the
    length of a block volume's file (grown only: shrinking would cut the guest's data)."""
    if content_type != "block":
        drv.set_quota(KIND, disk, size or None)
        return
    img = drv.volume_path(KIND, disk) / BLOCK_FILE
    new = parse_size(size, "size") if size else 0
    if new <= 0:
        raise BadRequest("A block volume needs a size: 'size' cannot be unset")
    if new < img.stat().st_size:
        raise BadRequest(f"Block volumes cannot be shrunk (from {img.stat().st_size} to "
                         f"{new} bytes): copy the data to a smaller volume instead")
    os.truncate(img, new)


def snapshot_names(drv: Driver, disk: str) -> list[str]:
    return drv.list_snapshots(KIND, disk)


def rename_snapshot(drv: Driver, disk: str, old: str, new: str) -> None:
    src = drv.snapshot_path(KIND, disk, old)
    dst = drv.snapshot_path(KIND, disk, new)
    if not src.is_dir():
        raise NotFound(f"Storage volume snapshot {old!r} not found")
    if os.path.lexists(dst):
        raise Conflict(f"Snapshot {new!r} already in use")
    os.rename(src, dst)


def _sync(src: Path, dst: Path) -> None:
    """Make ``dst``'s content equal ``src``'s (owners, modes, xattrs, holes kept)."""
    run("rsync", "-aHAX", "--sparse", "--numeric-ids", "--delete", f"{src}/", f"{dst}/",
        what="copy volume content")


def copy(src_drv: Driver, src_disk: str, dst_drv: Driver, dst_disk: str,
         snapshots: list[str], source_snapshot: str | None = None) -> Path:
    """A new volume ``dst_disk`` in ``dst_drv``'s pool from ``src_disk`` (or its snapshot
    ``source_snapshot``), with the source's ``snapshots`` (oldest first) made again.

    In one pool the driver's own copy (a btrfs snapshot, a reflinked ``cp -a``); across
    pools the content is synced snapshot by snapshot into the new volume and snapshotted
    there, then the live content last. Whole or nothing: a failure removes the new volume
    and its snapshots."""
    src = (src_drv.snapshot_path(KIND, src_disk, source_snapshot) if source_snapshot
           else src_drv.volume_path(KIND, src_disk))
    if not src.is_dir():
        raise NotFound(f"Storage volume {src_disk!r} not found in pool {src_drv.pool!r}")
    dst = dst_drv.volume_path(KIND, dst_disk)
    if os.path.lexists(dst):
        raise Conflict(f"Storage volume custom/{dst_disk} already exists in pool "
                       f"{dst_drv.pool!r}")
    same_pool = src_drv.pool == dst_drv.pool
    try:
        if same_pool:
            for snap in snapshots:
                target = dst_drv.snapshot_path(KIND, dst_disk, snap)
                target.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
                dst_drv._vol_copy(src_drv.snapshot_path(KIND, src_disk, snap), target,
                                  readonly=True)
            dst_drv._vol_copy(src, dst)  # writable, even from a read-only snapshot
        else:
            dst_drv.create_empty_volume(KIND, dst_disk)
            for snap in snapshots:
                _sync(src_drv.snapshot_path(KIND, src_disk, snap), dst)
                dst_drv.create_snapshot(KIND, dst_disk, snap)
            _sync(src, dst)
    except BaseException:
        remove(dst_drv, dst_disk)
        raise
    return dst


def refresh(src_drv: Driver, src_disk: str, dst_drv: Driver, dst_disk: str,
            snapshots: list[str]) -> list[str]:
    """Bring an existing copy up to date: the source's snapshots it lacks are made (in
    order), then its content is synced. Returns the snapshots added."""
    dst = dst_drv.volume_path(KIND, dst_disk)
    have = set(dst_drv.list_snapshots(KIND, dst_disk))
    added = []
    for snap in snapshots:
        if snap in have:
            continue
        _sync(src_drv.snapshot_path(KIND, src_disk, snap), dst)
        dst_drv.create_snapshot(KIND, dst_disk, snap)
        added.append(snap)
    _sync(src_drv.volume_path(KIND, src_disk), dst)
    return added


def remove(drv: Driver, disk: str) -> None:
    """Delete a volume and its snapshots if there (a missing one is no error)."""
    path = drv.volume_path(KIND, disk)
    if os.path.lexists(path):
        drv.delete_volume(KIND, disk)
        return
    root = drv._snap_root(KIND, disk)
    if root.is_dir():
        for snap in sorted(root.iterdir()):
            drv._vol_delete(snap)
        root.rmdir()
