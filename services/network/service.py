"""The network service: managed networks (bridges, DHCP/DNS, NAT) on this node."""

from __future__ import annotations

from shared.api import listing
from shared.models import ListRequest, Reply
from shared.service import Service, endpoint, main_for
from shared.state import Store


class NetworkService(Service):
    name = "network"
    description = "Corral networks: bridges, DHCP and DNS, NAT, NIC limits"

    async def setup(self) -> None:
        self.networks = await Store(self.bus, "networks", cache=True).open()

    @endpoint("list", ListRequest)
    async def list_networks(self, req: ListRequest) -> Reply:
        items = [(v["name"], v) for v in (await self.networks.items()).values()
                 if req.all_projects or v.get("project", "default") == req.project]
        return Reply(metadata=listing("networks", items, req.recursion, req.project))


main = main_for(NetworkService)
