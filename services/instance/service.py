"""The instance service: instances (containers, VMs) and profiles on this node."""

from __future__ import annotations

from shared.api import listing
from shared.models import ListRequest, Reply
from shared.service import Service, endpoint, main_for
from shared.state import Store


class InstanceService(Service):
    name = "instance"
    description = "Corral instances (LXC containers, QEMU VMs) and profiles"

    async def setup(self) -> None:
        self.instances = await Store(self.bus, "instances", cache=True).open()
        self.profiles = await Store(self.bus, "profiles", cache=True).open()

    @endpoint("list", ListRequest)
    async def list_instances(self, req: ListRequest) -> Reply:
        items = [(v["name"], v) for v in (await self.instances.items()).values()
                 if req.all_projects or v.get("project", "default") == req.project]
        return Reply(metadata=listing("instances", items, req.recursion, req.project))

    @endpoint("profile_list", ListRequest)
    async def list_profiles(self, req: ListRequest) -> Reply:
        items = [(v["name"], v) for v in (await self.profiles.items()).values()
                 if req.all_projects or v.get("project", "default") == req.project]
        return Reply(metadata=listing("profiles", items, req.recursion, req.project))


main = main_for(InstanceService)
