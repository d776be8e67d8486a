"""Storage verbs for snapshots and copies of volumes on this node (node scope):
``volume_snapshot_create``/``_delete``/``_rename``/``_restore``/``_list``,
``volume_copy``, ``volume_create`` (see ``shared/messages/storage.py``).

A mixin of :class:`services.storage.service.StorageService`: its endpoints are the
service's, kept here so the volume-copy logic has its own module.
"""

from __future__ import annotations


class VolumeSnapshotsMixin:
    """Snapshot, restore and copy verbs (filled in by the snapshots work of issue 10)."""
