"""The image service: images and aliases (metadata in KV; blobs in an object store)."""

from __future__ import annotations

from shared.api import listing
from shared.models import ListRequest, Reply
from shared.service import Service, endpoint, main_for
from shared.state import Store


class ImageService(Service):
    name = "image"
    description = "Corral images and image aliases"

    async def setup(self) -> None:
        self.images = await Store(self.bus, "images", cache=True).open()
        self.aliases = await Store(self.bus, "image_aliases", cache=True).open()

    @endpoint("list", ListRequest)
    async def list_images(self, req: ListRequest) -> Reply:
        items = [(fp, img) for fp, img in (await self.images.items()).items()
                 if req.all_projects or img.get("project", "default") == req.project]
        return Reply(metadata=listing("images", items, req.recursion, req.project))


main = main_for(ImageService)
