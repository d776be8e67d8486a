"""Storage verbs for snapshots and copies of volumes on this node (node scope):
``volume_snapshot_create``/``_delete``/``_rename``/``_restore``/``_list``,
``volume_path`` (of a volume or one of its snapshots), ``volume_copy``, ``volume_create``
(see ``shared/messages/storage.py``).

A mixin of :class:`services.storage.service.StorageService`: its endpoints are the
service's, kept here so the snapshot and copy logic has its own modules
(``snapshots.py``, ``copies.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.messages.storage import (
    VolumeCopyRequest,
    VolumeCreateRequest,
    VolumePathReply,
    VolumePathRequest,
    VolumeRequest,
    VolumeSnapshotListReply,
    VolumeSnapshotRenameRequest,
    VolumeSnapshotRequest,
)
from shared.models import Reply
from shared.service import endpoint

from . import copies, snapshots

if TYPE_CHECKING:
    from .volumes import Volumes


def _path(path) -> Reply:
    return Reply(metadata=VolumePathReply(path=str(path)).model_dump())


class VolumeSnapshotsMixin:
    """Snapshot, restore and copy verbs; ``self.volumes`` is the service's Volumes."""

    volumes: Volumes

    async def snapshots_setup(self) -> None:
        """At start, before ``Volumes.reconcile``: empty the pools' tmp dirs, then remove
        what killed copies and creates left (their ``creating`` records)."""
        await snapshots.clean_tmp(self.volumes)
        await copies.reconcile(self.volumes)

    @endpoint("volume_snapshot_create", VolumeSnapshotRequest, scope="node")
    async def volume_snapshot_create(self, req: VolumeSnapshotRequest) -> Reply:
        return _path(await snapshots.create(self.volumes, req))

    @endpoint("volume_snapshot_delete", VolumeSnapshotRequest, scope="node")
    async def volume_snapshot_delete(self, req: VolumeSnapshotRequest) -> Reply:
        await snapshots.delete(self.volumes, req)
        return Reply(metadata=None)

    @endpoint("volume_snapshot_rename", VolumeSnapshotRenameRequest, scope="node")
    async def volume_snapshot_rename(self, req: VolumeSnapshotRenameRequest) -> Reply:
        return _path(await snapshots.rename(self.volumes, req))

    @endpoint("volume_snapshot_restore", VolumeSnapshotRequest, scope="node")
    async def volume_snapshot_restore(self, req: VolumeSnapshotRequest) -> Reply:
        return _path(await snapshots.restore(self.volumes, req))

    @endpoint("volume_snapshot_list", VolumeRequest, scope="node")
    async def volume_snapshot_list(self, req: VolumeRequest) -> Reply:
        names = await snapshots.listing(self.volumes, req)
        return Reply(metadata=VolumeSnapshotListReply(snapshots=names).model_dump())

    @endpoint("volume_path", VolumePathRequest, scope="node")
    async def volume_path(self, req: VolumePathRequest) -> Reply:
        path, exists = await snapshots.path(self.volumes, req)
        return Reply(metadata=VolumePathReply(path=str(path), exists=exists).model_dump())

    @endpoint("volume_copy", VolumeCopyRequest, scope="node")
    async def volume_copy(self, req: VolumeCopyRequest) -> Reply:
        return _path(await copies.copy_volume(self.volumes, req))

    @endpoint("volume_create", VolumeCreateRequest, scope="node")
    async def volume_create(self, req: VolumeCreateRequest) -> Reply:
        return _path(await copies.create_volume(self.volumes, req))
