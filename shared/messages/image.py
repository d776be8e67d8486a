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


# -- issue 11: pulling from image servers, serving, refresh ----------------------------------

class PullSource(Request):
    """LXD's remote image source (``source`` of ``POST /1.0/images`` and ``POST
    /1.0/instances`` with ``mode: pull``): where the image is and how to reach it.

    ``protocol``: ``simplestreams``, ``lxd`` (another Corral or an LXD) or ``oci`` (an OCI
    distribution registry; ``alias`` is then ``name:tag`` or ``name@sha256:...``).
    ``certificate``: the server's PEM certificate to pin (else the system CAs).
    ``secret``: the one-time secret of a private image on an ``lxd`` server.
    ``image_type``: "container"/"virtual-machine" ("" = what the caller needs).
    """

    server: str
    protocol: str = "lxd"
    alias: str | None = None
    fingerprint: str | None = None
    certificate: str = ""
    secret: str = ""
    image_type: str = ""
    # Basic auth for an OCI registry ("user:password"); never stored in a record.
    credentials: str = ""


class PullRequest(Request):
    """``image.pull``: make a remote image local (or find it already local), as an
    operation of the image service.

    Reply: an async ``Reply`` whose operation carries ``download_progress`` (LXD's text,
    e.g. "rootfs: 42% (3.1MB/s)") in its metadata while it runs and ends with
    ``{"fingerprint": fp, "size": "n"}`` (the local image's fingerprint). The same
    ``request_id`` (or the same source while its download runs) joins the running operation
    instead of downloading twice.

    ``cached``: pulled to create an instance (LXD's cached image, removed after
    ``images.remote_cache_expiry`` days unused); ``lxc image copy`` pulls with cached
    false. ``instance_type``: for an instance create, the type it needs (the item of the
    remote product to take; a mismatch is a 400).
    """

    source: PullSource
    request_id: str
    cached: bool = True
    instance_type: str = ""
    auto_update: bool = False
    public: bool = False
    aliases: list[dict[str, str]] = []
    profiles: list[str] | None = None
    properties: dict[str, str] = {}


class RefreshRequest(Request):
    """``image.refresh`` (``POST /1.0/images/<fp>/refresh``): check the image's
    ``update_source`` for a newer version and take it (aliases move to the new image,
    the old one is deleted). Reply: async; final metadata ``{"refreshed": bool}``."""

    fingerprint: str


class SecretRequest(Request):
    """``image.secret`` (``POST /1.0/images/<fp>/secret``): an operation holding a
    one-time secret that lets an untrusted client read this (private) image once.
    ``check`` set: the gateway asks whether ``secret`` is valid for ``fingerprint``
    (reply metadata ``{"valid": bool}``) for the read ``use``: ``info`` (``GET
    /1.0/images/<fp>``) or ``export``; a valid answer spends that read."""

    fingerprint: str
    secret: str = ""
    check: bool = False
    use: str = "info"


class StreamsRequest(Request):
    """``image.streams``: the public images as a simplestreams tree. ``file`` is
    ``index.json`` or ``images.json`` (reply metadata: that document), or an item path
    (reply metadata: where its bytes are, as ``ExportRequest`` answers)."""

    file: str
