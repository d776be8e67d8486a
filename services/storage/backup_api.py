"""Volume backups on this node: freezing a volume (and its snapshots) for a backup, where
its trees are, dropping and renaming the frozen copies, and making a volume from a backup
tarball (LXD's backup format, plain trees or btrfs send streams). See ``backups.py``.

A mixin of :class:`services.storage.service.StorageService`.
"""

from __future__ import annotations

from typing import Any

from shared.messages.backup import (
    VolumeBackupFreezeRequest,
    VolumeBackupImportRequest,
    VolumeBackupRenameRequest,
    VolumeBackupRequest,
)
from shared.messages.storage import VolumePathReply
from shared.models import Reply
from shared.service import endpoint

from . import backups


class VolumeBackupsMixin:
    """Backup verbs, node-scoped: the frozen copies and the volumes live on this host."""

    volumes: Any
    bus: Any

    @endpoint("volume_backup_freeze", VolumeBackupFreezeRequest, scope="node")
    async def volume_backup_freeze(self, req: VolumeBackupFreezeRequest) -> Reply:
        reply = await backups.freeze(self.volumes, req)
        return Reply(metadata=reply.model_dump())

    @endpoint("volume_backup_get", VolumeBackupRequest, scope="node")
    async def volume_backup_get(self, req: VolumeBackupRequest) -> Reply:
        return Reply(metadata=(await backups.get(self.volumes, req)).model_dump())

    @endpoint("volume_backup_delete", VolumeBackupRequest, scope="node")
    async def volume_backup_delete(self, req: VolumeBackupRequest) -> Reply:
        await backups.delete(self.volumes, req)
        return Reply(metadata=None)

    @endpoint("volume_backup_rename", VolumeBackupRenameRequest, scope="node")
    async def volume_backup_rename(self, req: VolumeBackupRenameRequest) -> Reply:
        await backups.rename(self.volumes, req)
        return Reply(metadata=None)

    @endpoint("volume_backup_import", VolumeBackupImportRequest, scope="node")
    async def volume_backup_import(self, req: VolumeBackupImportRequest) -> Reply:
        path = await backups.import_volume(self.volumes, self.bus, req)
        return Reply(metadata=VolumePathReply(path=str(path)).model_dump())
