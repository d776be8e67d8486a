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


class BlobRequest(Request):
    """Where an image's files are. Reply metadata: ``{"bucket": "images", "objects":
    {"meta": name, "rootfs": name or None}, "type": "container"|"virtual-machine",
    "fingerprint": fp}``: a unified tarball is one ``meta`` object with ``rootfs`` None."""

    fingerprint: str
