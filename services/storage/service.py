"""The storage service: storage pools and their volumes on this node."""

from __future__ import annotations

from shared.api import listing
from shared.models import ListRequest, Reply
from shared.service import Service, endpoint, main_for
from shared.state import Store


class StorageService(Service):
    name = "storage"
    description = "Corral storage pools and volumes"

    async def setup(self) -> None:
        self.pools = await Store(self.bus, "storage_pools", cache=True).open()

    @endpoint("list", ListRequest)
    async def list_pools(self, req: ListRequest) -> Reply:
        items = [(v["name"], v) for v in (await self.pools.items()).values()]
        return Reply(metadata=listing("storage-pools", items, req.recursion))


main = main_for(StorageService)
