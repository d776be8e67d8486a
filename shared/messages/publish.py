"""``instance.publish`` (node scope): the image service asks the instance service of the
node that holds an instance (or one of its snapshots) to pack it as an LXD image into the
``transfers`` object store; then it imports those objects as it imports an upload.

Why this split: the instance service can read the instance's volume and knows its
metadata and state; the image service owns images. The packed bytes never travel as a
bus message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.models import Message, Request

COMPRESSIONS = ("none", "gzip", "xz", "zstd")


class PublishRequest(Request):
    """Pack instance ``name`` (or its snapshot ``snapshot``) of ``project``.

    ``properties`` replace those of the instance's metadata.yaml when given (LXD:
    ``lxc publish c1 key=value``); ``compression`` applies to the unified tarball of a
    container, or to the metadata tarball of a VM (its disk is a qcow2, as LXD's split VM
    images). A running instance is refused (400): stop it first (``lxc publish --force``
    does that on the client side)."""

    name: str
    snapshot: str | None = None
    properties: dict[str, str] | None = None
    compression: Literal["none", "gzip", "xz", "zstd"] = "gzip"
    expires_at: int = 0  # Unix time written as metadata.yaml's expiry_date (0: never)


class PublishReply(Message):
    """The objects in ``transfers`` (the image service owns and deletes them from now)."""

    meta: str
    rootfs: str | None = None
    rootfs_part: str | None = None  # "rootfs.img" for a VM's qcow2
    type: str = "container"
    properties: dict[str, str] = Field(default_factory=dict)
    filename: str = ""
