"""Image files for image volumes: ask the image service where they are, fetch, unpack.

The image service owns the ``images`` object store; it answers ``corral.image.blob`` with
the object names of an image's metadata tarball and (split images) rootfs. Files are
fetched into ``$CORRAL_DIR/tmp`` and removed after unpacking, whatever happens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import ValidationError

from shared import blobs
from shared.bus import Bus
from shared.errors import BadRequest, Internal
from shared.image.format import unpack
from shared.messages.storage import ImageBlobReply

# Fetching a large rootfs can take a while; the image service answers the lookup quickly.
BLOB_LOOKUP_TIMEOUT = 10.0


def check_fingerprint(fp: str) -> str:
    """Image volumes are named by the full sha256, never a prefix or anything path-like."""
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise BadRequest(f"Invalid image fingerprint {fp!r}: expected the full sha256 "
                         "(64 lowercase hex digits)")
    return fp


@asynccontextmanager
async def fetched(bus: Bus, fingerprint: str, tmp_root: Path
                  ) -> AsyncIterator[tuple[Path, Path | None, str]]:
    """Yield (metadata file, rootfs file or None, image type) in a private temp dir."""
    reply = await bus.request("image", "blob", {"fingerprint": fingerprint},
                              timeout=BLOB_LOOKUP_TIMEOUT)
    try:
        info = ImageBlobReply.model_validate(reply.metadata or {})
    except ValidationError as exc:
        raise Internal(f"The image service answered image.blob for {fingerprint} with "
                       f"something unexpected: {exc}") from exc
    meta_name = info.objects.get("meta")
    if not meta_name:
        raise Internal(f"The image service named no metadata file for image {fingerprint}")
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"image-{fingerprint[:12]}-", dir=tmp_root))
    try:
        store = await blobs.bucket(bus, info.bucket)
        meta = tmp / "meta"
        await blobs.get_file(store, meta_name, meta)
        rootfs = None
        if info.objects.get("rootfs"):
            rootfs = tmp / "rootfs"
            await blobs.get_file(store, info.objects["rootfs"], rootfs)
        yield meta, rootfs, info.type
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpacker(meta: Path, rootfs: Path | None):
    """The ``fill`` callback for ``Driver.create_image_volume``: unpack into the volume."""
    def fill(path: Path) -> None:
        unpack(meta, path, rootfs)

    return fill
