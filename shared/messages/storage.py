"""Bus messages of the storage service (requests other services send, and the replies).

Pool CRUD from the gateway uses the generic ``CreateRequest``/``ObjectRequest``/
``ListRequest``; the models here are the volume verbs, which are node-scoped
(``corral.node.<node>.storage.<verb>``) because a volume lives on one host's disks.

A reply's ``metadata`` is the ``model_dump()`` of the reply model named below; callers
read it back with ``VolumePathReply.model_validate(reply.metadata)``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.models import ListRequest, Message, Request

InstanceKind = Literal["container", "virtual-machine"]


class VolumeRequest(Request):
    """One volume: ``kind`` is LXD's volume type (container, virtual-machine, image, custom).

    ``project`` (from :class:`Request`) matters: outside ``default`` the volume is stored
    as ``<project>_<name>`` on disk, as LXD does, so two projects may reuse a name.
    """

    pool: str
    kind: str = "container"
    name: str


class VolumeFromImageRequest(Request):
    """``volume_from_image``: an instance root volume made from an image (unpacked once
    per pool into an image volume, then snapshotted/copied). Reply: :class:`VolumePathReply`
    with ``exists=True``."""

    pool: str
    kind: InstanceKind = "container"
    name: str
    fingerprint: str
    # Idempotency key (the caller's operation): a request sent again with the same key,
    # because its answer was lost (a nats-server restart), gets the same volume back
    # instead of a 409, even while the first one is still being made.
    request_id: str | None = None


class VolumePathReply(Message):
    """``volume_path`` (and ``volume_from_image``, ``volume_rename``): where the volume is."""

    path: str
    exists: bool = True


class VolumeQuotaRequest(VolumeRequest):
    """``volume_quota``: limit a volume's size ("" removes the limit); applied at once by
    the pool (btrfs: a qgroup limit), 400 when the pool's driver has no quotas (dir)."""

    size: str = ""


class VolumeRenameRequest(VolumeRequest):
    """``volume_rename``: ``name`` -> ``new_name`` in the same pool and project."""

    new_name: str


class ImageVolumeDeleteRequest(Request):
    """``image_volume_delete``: drop the image's volume from every pool on this node."""

    fingerprint: str


class ImageVolumeDeleteReply(Message):
    """The pools the image volume was removed from (empty when none had it)."""

    pools: list[str] = Field(default_factory=list)


class VolumeListRequest(ListRequest):
    """``volume_list`` (``/1.0/storage-pools/<pool>/volumes[/<kind>]``)."""

    pool: str
    kind: str | None = None


class VolumeGetRequest(Request):
    """``volume_get`` (``/1.0/storage-pools/<pool>/volumes/<kind>/<name>``)."""

    pool: str
    kind: str
    name: str


class ImageBlobReply(Message):
    """What ``corral.image.blob`` answers (owned by the image service; parsed here):
    the object store bucket and object names of an image's files."""

    bucket: str = "images"
    objects: dict[str, str | None]
    type: InstanceKind = "container"


class VolumeRef(Message):
    """One volume named by a batch request (its project is its own, not the request's)."""

    project: str = "default"
    pool: str
    kind: str = "container"
    name: str
    snapshot: str | None = None  # that snapshot of the volume (its exclusive bytes)


class VolumeUsageRequest(Request):
    """``volume_usage``: bytes used by many volumes at once, so that a listing of every
    instance with its state costs one request. Reply: :class:`VolumeUsageReply`."""

    volumes: list[VolumeRef] = Field(default_factory=list)


class VolumeUsageReply(Message):
    """``usage[i]`` answers ``volumes[i]``: bytes, or None when the pool's driver cannot
    tell cheaply (dir, as LXD 5.0 without project quotas), or the volume/pool is gone."""

    usage: list[int | None] = Field(default_factory=list)


# ---- snapshots, copies, empty volumes (node verbs; issue 10) ------------------------------


class VolumeSnapshotRequest(VolumeRequest):
    """``volume_snapshot_create`` / ``_delete`` / ``_restore``: snapshot ``snapshot`` of the
    volume ``kind``/``name`` (any kind with snapshots: container, virtual-machine, custom).

    create: a read-only (btrfs) or copied (dir, reflink where possible) point-in-time
    copy; reply :class:`VolumePathReply`. restore: the volume's content replaced by the
    snapshot's, atomically (the volume is never missing, whatever fails). delete: 404 when
    it does not exist."""

    snapshot: str


class VolumeSnapshotRenameRequest(VolumeSnapshotRequest):
    """``volume_snapshot_rename``: ``snapshot`` -> ``new_snapshot`` of the same volume."""

    new_snapshot: str


class VolumeSnapshotListReply(Message):
    """``volume_snapshot_list`` (a :class:`VolumeRequest`): the volume's snapshots found on
    disk, sorted by name (the host is the truth; the instance service compares them with
    its records and keeps their order and dates)."""

    snapshots: list[str] = Field(default_factory=list)


class VolumePathRequest(VolumeRequest):
    """``volume_path``: where a volume (or one of its snapshots) is on this node."""

    snapshot: str | None = None


class VolumeCopyRequest(Request):
    """``volume_copy``: a new volume ``pool``/``kind``/``name`` in ``project``, copied from
    ``source_*`` (optionally from its snapshot ``source_snapshot``), on this node.

    ``snapshots`` names the source's snapshots to copy along (same names, oldest first).
    ``refresh``: the target exists; bring it up to date (snapshots it lacks, then the
    volume's content). Another pool is allowed (btrfs send/receive where both are btrfs,
    a file copy otherwise). Made whole or not at all: no half volume or record stays.
    ``request_id`` makes a repeat (a lost answer) get the same volume. Reply:
    :class:`VolumePathReply`.

    The copy's record keeps the source record's description, config and content type,
    the volume its quota; a dir pool's VM overlay keeps its image in the same pool and is
    flattened (its own ``rootfs.img``) in another. The source is held for reading: other
    copies of it may run, a delete, restore or snapshot of it meanwhile is a 409.
    Snapshots of the target that the source lacks are left alone by ``refresh``."""

    pool: str
    kind: str = "container"
    name: str
    source_project: str = "default"
    source_pool: str
    source_name: str
    source_snapshot: str | None = None
    snapshots: list[str] = Field(default_factory=list)
    refresh: bool = False
    request_id: str | None = None


class VolumeCreateRequest(VolumeRequest):
    """``volume_create``: an empty volume (instance root for an import, or custom).
    ``content_type`` filesystem (a directory/subvolume) or block (a ``root.img`` file of
    ``size`` bytes inside it). Reply: :class:`VolumePathReply`."""

    size: str = ""
    content_type: Literal["filesystem", "block"] = "filesystem"
    request_id: str | None = None
