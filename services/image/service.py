"""The image service: images and aliases (records in KV; files in the ``images`` store).

Thin on purpose: each endpoint decodes, calls ``images``/``aliases``/``imports`` and
answers. Verbs: list, get, update, patch, delete, create (JSON sources), import (uploads),
export, resolve, blob, and alias_list|create|get|update|patch|delete|rename.
"""

from __future__ import annotations

import shutil
from typing import Any

from shared import blobs
from shared.errors import BadRequest
from shared.messages.image import BlobRequest, ExportRequest, ImportRequest, ResolveRequest
from shared.models import (
    CreateRequest,
    ListRequest,
    ObjectRequest,
    Reply,
    ServerInfoReply,
)
from shared.service import Service, endpoint, main_for
from shared.state import Store

from . import imports, publish, records
from .aliases import Aliases
from .context import ImageContext
from .images import Images
from .lifecycle_api import API_EXTENSIONS as LIFECYCLE_EXTENSIONS
from .lifecycle_api import LifecycleMixin
from .pull_api import API_EXTENSIONS as PULL_EXTENSIONS
from .pull_api import PullMixin
from .serve_api import API_EXTENSIONS as SERVE_EXTENSIONS
from .serve_api import ServeMixin

# Only what is really implemented: the type field and VM uploads, expiry, profiles, and
# aliases applied by the import itself.
API_EXTENSIONS = ["image_types", "images_expiry", "image_profiles", "image_create_aliases",
                  "image_compression_algorithm"]
REMOTE_SOURCES = ("image", "url")


class ImageService(PullMixin, ServeMixin, LifecycleMixin, Service):
    name = "image"
    description = "Corral images and image aliases"

    async def setup(self) -> None:
        self.images = await Store(self.bus, "images", cache=True).open()
        self.aliases = await Store(self.bus, "image_aliases", cache=True).open()
        await blobs.bucket(self.bus, records.BUCKET)
        # Imports interrupted by a crash leave their temp dirs: nothing can resume them.
        for stale in (self.config.dir / "tmp").glob("image-import-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.ctx = ImageContext(images=self.images, aliases=self.aliases, bus=self.bus,
                                events=self.events, log=self.log, node=self.config.node,
                                tmp_dir=self.config.dir / "tmp")
        self.alias_logic = Aliases(self.ctx)
        self.image_logic = Images(self.ctx, self.alias_logic)
        await self.setup_pull()
        await self.setup_serve()
        await self.setup_lifecycle()

    def server_info(self) -> ServerInfoReply:
        return ServerInfoReply(api_extensions=[*API_EXTENSIONS, *PULL_EXTENSIONS,
                                               *SERVE_EXTENSIONS, *LIFECYCLE_EXTENSIONS])

    # -- images ---------------------------------------------------------------------------

    @endpoint("list", ListRequest)
    async def list_images(self, req: ListRequest) -> Reply:
        return Reply(metadata=self.image_logic.list(req))

    @endpoint("get", ObjectRequest)
    async def get_image(self, req: ObjectRequest) -> Reply:
        return self.image_logic.get(req.project, req.name)

    @endpoint("update", ObjectRequest)
    async def put_image(self, req: ObjectRequest) -> Reply:
        await self.image_logic.update(req.project, req.name, req.body or {}, req.etag,
                                      req.requestor, replace=True)
        return Reply(metadata={})

    @endpoint("patch", ObjectRequest)
    async def patch_image(self, req: ObjectRequest) -> Reply:
        await self.image_logic.update(req.project, req.name, req.body or {}, req.etag,
                                      req.requestor, replace=False)
        return Reply(metadata={})

    @endpoint("delete", ObjectRequest)
    async def delete_image(self, req: ObjectRequest) -> Reply:
        _k, rec = records.find(self.images, req.project, req.name)
        fp = rec["fingerprint"]

        async def run(_op: Any) -> None:
            await self.image_logic.delete(req.project, fp, req.requestor)

        op = await self.operations.start("Deleting image", run, project=req.project,
                                         resources={"images": [f"/1.0/images/{fp}"]})
        return Reply(type="async", operation=op.lxd())

    @endpoint("create", CreateRequest)
    async def create_image(self, req: CreateRequest) -> Reply:
        """``POST /1.0/images`` with a JSON body: only the errors for now."""
        source = req.body.get("source")
        if not isinstance(source, dict):
            raise BadRequest("Invalid images JSON: expected a source, or upload an image file")
        kind = source.get("type", "")
        if source.get("mode") == "push":
            raise BadRequest("Push mode is not supported: pull the image from its server "
                             "(source.mode pull) or import the file (lxc image import FILE)")
        if kind in REMOTE_SOURCES:
            return await self.create_from_source(req)
        if kind in publish.SOURCE_TYPES:  # lxc publish
            pub = publish.check(req.body)

            async def run(op: Any) -> dict[str, Any]:
                return await publish.run(self.ctx, self.alias_logic, req, pub, op)

            op = await self.operations.start("Creating image", run, project=req.project)
            return Reply(type="async", operation=op.lxd())
        raise BadRequest(f"Invalid image source type {kind!r}")

    @endpoint("import", ImportRequest)
    async def import_image(self, req: ImportRequest) -> Reply:
        async def run(op: Any) -> dict[str, Any]:
            return await imports.run(self.ctx, self.alias_logic, req, op)

        op = await self.operations.start("Downloading image", run, project=req.project)
        return Reply(type="async", operation=op.lxd())

    @endpoint("export", ExportRequest)
    async def export_image(self, req: ExportRequest) -> Reply:
        _k, rec = records.find(self.images, req.project, req.fingerprint)
        return Reply(metadata=records.export_reply(rec))

    # -- for other services ---------------------------------------------------------------

    @endpoint("resolve", ResolveRequest)
    async def resolve(self, req: ResolveRequest) -> Reply:
        return Reply(metadata=await self.image_logic.resolve(req))

    @endpoint("blob", BlobRequest)
    async def blob(self, req: BlobRequest) -> Reply:
        _k, rec = records.find(self.images, req.project, req.fingerprint)
        return Reply(metadata=records.blob_reply(rec))

    # -- aliases --------------------------------------------------------------------------

    @endpoint("alias_list", ListRequest)
    async def alias_list(self, req: ListRequest) -> Reply:
        return Reply(metadata=self.alias_logic.list(req.project, req.recursion,
                                                    req.all_projects))

    @endpoint("alias_create", CreateRequest)
    async def alias_create(self, req: CreateRequest) -> Reply:
        await self.alias_logic.create(req.project, req.body, req.requestor)
        return Reply(metadata={})

    @endpoint("alias_get", ObjectRequest)
    async def alias_get(self, req: ObjectRequest) -> Reply:
        return await self.alias_logic.get(req.project, req.name)

    @endpoint("alias_update", ObjectRequest)
    async def alias_update(self, req: ObjectRequest) -> Reply:
        await self.alias_logic.update(req.project, req.name, req.body or {}, req.etag,
                                      req.requestor, replace=True)
        return Reply(metadata={})

    @endpoint("alias_patch", ObjectRequest)
    async def alias_patch(self, req: ObjectRequest) -> Reply:
        await self.alias_logic.update(req.project, req.name, req.body or {}, req.etag,
                                      req.requestor, replace=False)
        return Reply(metadata={})

    @endpoint("alias_rename", ObjectRequest)
    async def alias_rename(self, req: ObjectRequest) -> Reply:
        await self.alias_logic.rename(req.project, req.name, req.body or {}, req.requestor)
        return Reply(metadata={})

    @endpoint("alias_delete", ObjectRequest)
    async def alias_delete(self, req: ObjectRequest) -> Reply:
        await self.alias_logic.delete(req.project, req.name, req.requestor)
        return Reply(metadata={})


main = main_for(ImageService)
