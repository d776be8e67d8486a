"""Bus messages of backups (issue 10): the storage verbs the instance service calls to
freeze a volume for a backup, find it again, drop it, and make a volume from a backup.

The storage verbs are node-scoped (``corral.node.<node>.storage.volume_backup_*``): a
frozen copy lives on this host's pool.
"""

from __future__ import annotations

from pydantic import Field

from shared.models import Message, Request

from .storage import VolumeRequest


class VolumeBackupRequest(VolumeRequest):
    """``volume_backup_get`` / ``_delete`` (and the base of freeze/rename): backup
    ``backup`` of the volume ``kind``/``name`` with its snapshots ``snapshots``."""

    backup: str
    snapshots: list[str] = Field(default_factory=list)


class VolumeBackupFreezeRequest(VolumeBackupRequest):
    """``volume_backup_freeze``: keep the volume and ``snapshots`` as they are now for
    backup ``backup``. btrfs: read-only subvolume snapshots (no copy of the data); dir:
    nothing is kept, the export reads the live volume (documented: no full copy on disk).
    ``backup_config`` is written at the frozen volume's top as ``backup.yaml`` (LXD's
    importer reads it from inside the volume), its ``pool`` and ``volume`` filled in."""

    backup_config: dict | None = None


class VolumeBackupRenameRequest(VolumeBackupRequest):
    """``volume_backup_rename``: to ``new_backup``, and to the volume ``new_name`` when
    given (the instance was renamed: its backups follow it, as in LXD)."""

    new_backup: str
    new_name: str = ""


class VolumeBackupReply(Message):
    """Where to read a backup's trees: ``volume`` and ``snapshots`` (name -> path);
    ``frozen`` says whether they are read-only copies made for it (btrfs) or the live
    volume (dir). ``driver``, ``pool`` (LXD's pool object) and ``volume`` (LXD's volume
    object) go into index.yaml."""

    frozen: bool = False
    path: str
    snapshot_paths: dict[str, str] = Field(default_factory=dict)
    driver: str = ""
    pool: dict = Field(default_factory=dict)
    volume: dict = Field(default_factory=dict)


class VolumeBackupImportRequest(VolumeRequest):
    """``volume_backup_import``: make the volume ``kind``/``name`` (and its snapshots,
    oldest first) from a backup tarball staged in the object store ``bucket``/``object``.
    ``optimized``: btrfs send streams (btrfs pools only). Whole or nothing: on failure
    neither the volume, its snapshots nor its record stay. Reply: VolumePathReply."""

    bucket: str = "transfers"
    object: str = ""
    snapshots: list[str] = Field(default_factory=list)
    optimized: bool = False
    request_id: str | None = None
    # instead of ``object``: a backup staged as a directory on this node (a migration's
    # received trees, shared/backup/staged.py): no tarball is written or uploaded
    directory: str = ""


# ---- the instance service's backup verbs (from the gateway) -----------------------------


class BackupRequest(Request):
    """``backup_get`` / ``backup_delete`` / ``backup_rename`` (``body``: {"name": new}),
    ``backup_create`` (``body``: LXD's InstanceBackupsPost): ``name`` is the instance."""

    name: str
    backup: str = ""
    body: dict | None = None


class BackupExportRequest(BackupRequest):
    """``backup_export``: stream the tarball on ``corral.streams.<stream>.data.out``
    (the gateway subscribed first); the gateway grants credit on ``.in``, one message per
    chunk it has written, so a slow download slows the tarball down instead of filling
    memory. The reply (sync) says the file name; the bytes follow on the stream."""

    stream: str


class BackupImportRequest(Request):
    """``backup_import``: a backup tarball the gateway staged in ``bucket``/``object``
    (the instance service deletes it when done); ``name``/``pool`` override index.yaml's
    (``X-LXD-name``, ``X-LXD-pool``)."""

    bucket: str = "transfers"
    object: str = ""
    name: str = ""
    pool: str = ""
    # instead of ``object``: a backup staged as a directory on this node (a migration
    # target's received trees, shared/backup/staged.py); the sender removes it
    directory: str = ""
