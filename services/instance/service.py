"""The instance service: instances (containers, VMs) and profiles on this node."""

from __future__ import annotations

from shared.api import listing, url
from shared.models import CreateRequest, ListRequest, ObjectRequest, Reply
from shared.service import Service, endpoint, main_for
from shared.state import Store

from .profiles import Profiles, profile_etag


class InstanceService(Service):
    name = "instance"
    description = "Corral instances (LXC containers, QEMU VMs) and profiles"

    async def setup(self) -> None:
        self.instances = await Store(self.bus, "instances", cache=True).open()
        self.profiles = Profiles(await Store(self.bus, "profiles", cache=True).open())

    # -- instances --------------------------------------------------------------------------

    @endpoint("list", ListRequest)
    async def list_instances(self, req: ListRequest) -> Reply:
        items = [(v["name"], v) for v in (await self.instances.items()).values()
                 if req.all_projects or v.get("project", "default") == req.project]
        return Reply(metadata=listing("instances", items, req.recursion, req.project))

    def used_by(self, project: str, profile: str) -> list[str]:
        """Instances whose profile list names this profile (cached: no bus round trip)."""
        return [url("instances", v["name"], project)
                for v in self.instances.cached()
                if v.get("project", "default") == project and profile in v.get("profiles", [])]

    # -- profiles ---------------------------------------------------------------------------

    @endpoint("profile_list", ListRequest)
    async def list_profiles(self, req: ListRequest) -> Reply:
        items = [(p["name"], self.profiles.public(p, self.used_by(req.project, p["name"])))
                 for p in await self.profiles.list(req.project)]
        return Reply(metadata=listing("profiles", items, req.recursion, req.project))

    @endpoint("profile_get", ObjectRequest)
    async def get_profile(self, req: ObjectRequest) -> Reply:
        p, _rev = await self.profiles.get(req.project, req.name)
        return Reply(metadata=self.profiles.public(p, self.used_by(req.project, req.name)),
                     etag=profile_etag(p))

    @endpoint("profile_create", CreateRequest)
    async def create_profile(self, req: CreateRequest) -> Reply:
        p = await self.profiles.create(req.body, req.project)
        await self.events.lifecycle("profile-created", self.profiles.url(p["name"], req.project),
                                    project=req.project, requestor=req.requestor)
        return Reply(metadata=None)

    async def _update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.profiles.update(req.project, req.name, req.body or {}, req.etag, patch)
        await self.events.lifecycle("profile-updated", self.profiles.url(req.name, req.project),
                                    project=req.project, requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("profile_update", ObjectRequest)
    async def update_profile(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=False)

    @endpoint("profile_patch", ObjectRequest)
    async def patch_profile(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=True)

    @endpoint("profile_rename", ObjectRequest)
    async def rename_profile(self, req: ObjectRequest) -> Reply:
        new = await self.profiles.rename(req.project, req.name, (req.body or {}).get("name"))
        await self.events.lifecycle(
            "profile-renamed", self.profiles.url(new["name"], req.project), project=req.project,
            context={"old_name": req.name}, requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("profile_delete", ObjectRequest)
    async def delete_profile(self, req: ObjectRequest) -> Reply:
        await self.profiles.delete(req.project, req.name, self.used_by(req.project, req.name))
        await self.events.lifecycle("profile-deleted", self.profiles.url(req.name, req.project),
                                    project=req.project, requestor=req.requestor)
        return Reply(metadata=None)


main = main_for(InstanceService)
