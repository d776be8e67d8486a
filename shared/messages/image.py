"""What the image service answers for other services (the gateway uses the generic models)."""

from __future__ import annotations

from shared.models import Request


class ResolveRequest(Request):
    """Find the image an instance is created from: by alias, fingerprint or unique prefix.

    ``instance_type`` is "container" or "virtual-machine"; an image of the other type is
    a 400 saying so. Reply metadata: the image in LXD's shape (fingerprint, type,
    properties, architecture, aliases, ...).
    """

    alias: str | None = None
    fingerprint: str | None = None
    instance_type: str = "container"
    # The caller creates an instance from it: stamp the image's last_used_at (LXD does).
    for_create: bool = True


class BlobRequest(Request):
    """Where an image's files are. Reply metadata: ``{"bucket": "images", "objects":
    {"meta": name, "rootfs": name or None}, "type": "container"|"virtual-machine",
    "fingerprint": fp}``: a unified tarball is one ``meta`` object with ``rootfs`` None."""

    fingerprint: str


class ImportRequest(Request):
    """``import``: register an uploaded image whose files the gateway put in the
    ``transfers`` object store. The image service owns (and deletes) those objects from the
    moment it accepts the request. Reply: an async ``Reply`` whose operation metadata ends
    with LXD's ``{"fingerprint": fp, "size": "n"}``."""

    meta: str
    rootfs: str | None = None
    # The multipart field name of the rootfs part: "rootfs" (container) or "rootfs.img" (VM).
    rootfs_part: str | None = None
    filename: str = ""
    public: bool = False
    properties: dict[str, str] = {}
    profiles: list[str] | None = None
    # X-LXD-fingerprint: the fingerprint the client expects; a mismatch fails the import.
    fingerprint: str | None = None
    aliases: list[dict[str, str]] = []


class ExportRequest(Request):
    """``export``: where the files of an image (full fingerprint or unique prefix) are and
    what to call them. Reply metadata: ``{"fingerprint", "type", "bucket", "files": [{"part":
    "metadata"|"rootfs"|"rootfs.img", "object", "filename", "size"}]}`` (one file: unified)."""

    fingerprint: str
