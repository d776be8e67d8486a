"""Volume backups on this node: streaming a volume (and its snapshots) out as a tarball or
btrfs send stream, and making a volume from one (LXD's backup format).

A mixin of :class:`services.storage.service.StorageService`.
"""

from __future__ import annotations


class VolumeBackupsMixin:
    """Backup export/import verbs (filled in by the backups work of issue 10)."""
