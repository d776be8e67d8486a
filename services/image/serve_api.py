"""Serving images to others: one-time secrets of private images (``POST
/1.0/images/<fp>/secret``) and the public images as a simplestreams tree (``image.streams``,
answered on the gateway's ``/streams/v1/...`` and ``/images/<fp>/<file>``).

A mixin of :class:`services.image.service.ImageService`; the logic is in ``secrets.py``
(the tokens) and ``streams_tree.py`` (the tree, pure). Only the default project's public
images are in the tree: that is all an untrusted client of LXD may see without a secret.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import nats.js.errors as jse

from shared import blobs
from shared.errors import BadRequest, NotFound
from shared.messages.image import SecretRequest, StreamsRequest
from shared.models import Reply
from shared.service import endpoint

from . import records
from .aliases import in_project as aliases_in_project
from .secrets import USES, Secrets
from .streams_tree import INDEX, PRODUCTS, FileInfo, Tree, build

# No LXD API extension names these: image secrets are LXD's base API (1.0), and no LXD
# serves simplestreams from the daemon.
API_EXTENSIONS: list[str] = []
TREE_PROJECT = "default"


class ServeMixin:
    ctx: Any
    operations: Any
    images: Any
    events: Any

    async def setup_serve(self) -> None:
        """Called from ImageService.setup (after ctx exists)."""
        self.secrets = Secrets(self.operations, self.events)
        # object name -> sha256/size: objects never change once stored (fingerprint names)
        self._file_info: dict[str, FileInfo] = {}

    @endpoint("secret", SecretRequest)
    async def secret(self, req: SecretRequest) -> Reply:
        """Issue a secret (LXD: an operation whose metadata holds it), or, with ``check``,
        tell the gateway whether a presented secret opens this read of the image."""
        if req.check:
            if req.use not in USES:
                raise BadRequest(f"Invalid secret use {req.use!r}: expected one of "
                                 f"{', '.join(USES)}")
            try:
                _k, rec = records.find(self.images, req.project, req.fingerprint)
            except (NotFound, BadRequest):
                return Reply(metadata={"valid": False})
            return Reply(metadata={"valid": self.secrets.use(
                req.project, rec["fingerprint"], req.secret, req.use)})
        _k, rec = records.find(self.images, req.project, req.fingerprint)
        op = await self.secrets.issue(req.project, rec["fingerprint"], req.requestor)
        return Reply(type="async", operation=op.lxd())

    @endpoint("streams", StreamsRequest)
    async def streams(self, req: StreamsRequest) -> Reply:
        """``index.json``/``images.json`` (the document), or an item's path (where its
        bytes are: bucket, object, size, filename); 404 for anything the tree lacks."""
        tree = await self._tree()
        name = req.file.strip("/")
        if name in (INDEX, "index.json"):
            return Reply(metadata=tree.index)
        if name in (PRODUCTS, "images.json"):
            return Reply(metadata=tree.products)
        served = tree.files.get(name)
        if served is None:
            raise NotFound(f"No file {name!r} in the simplestreams tree: only public images "
                           "are served, see streams/v1/images.json for their paths")
        return Reply(metadata={"bucket": records.BUCKET, "object": served.object,
                               "size": served.size, "filename": served.filename})

    async def _tree(self) -> Tree:
        recs = [r for r in records.in_project(self.images, TREE_PROJECT) if r.get("public")]
        wanted = {o for r in recs for o in ((r.get("_blob") or {}).get("meta"),
                                             (r.get("_blob") or {}).get("rootfs")) if o}
        missing = wanted - set(self._file_info)
        if missing:
            store = await blobs.bucket(self.ctx.bus, records.BUCKET)
            for name in sorted(missing):
                info = await _object_info(store, name)
                if info is not None:
                    self._file_info[name] = info
        return build(recs, aliases_in_project(self.ctx.aliases, TREE_PROJECT),
                     self._file_info)


async def _object_info(store: Any, name: str) -> FileInfo | None:
    """sha256 and size from the object store's own digest (no need to read the bytes)."""
    try:
        info = await store.get_info(name)
    except jse.ObjectNotFoundError:
        return None
    digest = str(info.digest or "")
    kind, _, value = digest.partition("=")
    if kind.upper() != "SHA-256":
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return FileInfo(sha256=raw.hex(), size=int(info.size or 0))
