"""The disk side of custom volumes (blocking; the service runs these in a thread).

A filesystem volume is the pool's plain volume (a directory on dir, a subvolume on
btrfs); its ``size`` is a quota (btrfs qgroup). A block volume is the same directory
holding one sparse file, ``root.img``, of ``size`` bytes (LXD's layout for block volumes
on dir and btrfs), which a VM attaches as a disk. Snapshots use the driver's snapshot
layout (``custom-snapshots/<volume>/<snapshot>``).

Making, copying and snapshotting are the storage verbs' (:mod:`.copies`,
:mod:`.snapshots`); what is custom-volume only lives here.
"""

from __future__ import annotations

import os

from shared.errors import BadRequest

from .drivers import Driver
from .drivers.util import parse_size

KIND = "custom"
BLOCK_FILE = "root.img"


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
