"""Pulling images from servers: one fetcher per protocol, behind one interface.

The pull logic (``pull.py``) does not know protocols: it asks the source's fetcher to
``resolve`` the source (which image, its fingerprint, without downloading), checks whether
that image is already local, and only then asks it to ``download`` the files into a private
work dir. It then imports the files like an upload (same inspection, same store, same
record), so a pulled image is an image like any other.

Fetchers: ``simplestreams`` (images.linuxcontainers.org's format, and Corral's own served
tree), ``lxd`` (another Corral or an LXD, over its REST API), ``oci`` (an OCI distribution
registry; the image is turned into an LXD-format split image of an application container).
``protocols.fetcher(name)`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from shared.messages.image import PullSource

# progress(part, done_bytes, total_bytes): the pull turns it into LXD's
# "download_progress" text ("rootfs: 42% (3.10MB/s)"); total 0 when unknown.
Progress = Callable[[str, int, int], Awaitable[None]]


@dataclass
class Remote:
    """What the server says about the image, before any file is fetched."""

    fingerprint: str
    type: str  # "container" or "virtual-machine"
    architecture: str = ""
    size: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    # LXD's update_source of an image pulled from here: {"alias", "certificate",
    # "protocol", "server", "image_type"} (what a refresh asks again).
    update_source: dict[str, str] = field(default_factory=dict)
    # The fetcher's own notes for download() (URLs, digests, sizes...).
    private: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fetched:
    """The downloaded files, checked (sha256 and size) and ready to import."""

    meta: Path  # the metadata tarball, or the unified tarball
    rootfs: Path | None = None  # split images: tarball, squashfs or qcow2 (VM)
    rootfs_part: str | None = None  # "rootfs" or "rootfs.img"
    # False when the fingerprint is not sha256(meta + rootfs) (OCI: the manifest digest);
    # the import then takes Remote.fingerprint instead of the computed one.
    fingerprint_is_content: bool = True
    filename: str = ""


class Fetcher(Protocol):
    async def resolve(self, source: PullSource, instance_type: str) -> Remote: ...

    async def download(self, source: PullSource, remote: Remote, workdir: Path,
                       progress: Progress) -> Fetched: ...

