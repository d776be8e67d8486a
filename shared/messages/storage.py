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


class VolumeUsageRequest(Request):
    """``volume_usage``: bytes used by many volumes at once, so that a listing of every
    instance with its state costs one request. Reply: :class:`VolumeUsageReply`."""

    volumes: list[VolumeRef] = Field(default_factory=list)


class VolumeUsageReply(Message):
    """``usage[i]`` answers ``volumes[i]``: bytes, or None when the pool's driver cannot
    tell cheaply (dir, as LXD 5.0 without project quotas), or the volume/pool is gone."""

    usage: list[int | None] = Field(default_factory=list)
