"""The instance service's ``project_*`` endpoints (``/1.0/projects``), a mixin.

Why in the instance service: see :mod:`.projects`. A project is "in use" while it has
instances or profiles other than its own ``default`` (LXD's test): only then may its
features change, and only an empty project can be renamed or deleted.
"""

from __future__ import annotations

from typing import Any

from shared.api import listing, url
from shared.errors import CorralError
from shared.models import CreateRequest, ListRequest, ObjectRequest, Reply
from shared.service import endpoint
from shared.state import key

from . import project_limits
from .projects import DEFAULT, Projects, project_etag, true

# What `lxc project` checks before it sends anything (LXD's names).
PROJECT_EXTENSIONS = ["projects", "projects_limits", "projects_restrictions",
                      "projects_limits_instances", "projects_limits_disk", "project_usage",
                      "instance_all_projects"]


class ProjectsMixin:
    """``project_list``, ``project_get``, ``project_state``, ``project_create``,
    ``project_update``, ``project_patch``, ``project_rename``, ``project_delete``."""

    projects: Projects

    async def project_images(self, name: str, strict: bool) -> list[str]:
        """URLs of the project's own images (with ``features.images``), asked of the
        image service; when it does not answer, none unless ``strict`` (then 503)."""
        p = self.projects.find(name)
        if name == DEFAULT or p is None or not true(p["config"].get("features.images")):
            return []
        try:
            reply = await self.bus.request("image", "list", ListRequest(project=name))
        except CorralError:
            if strict:
                raise
            return []
        return [str(u) for u in reply.metadata or []]

    async def project_volumes(self, name: str, strict: bool) -> list[str]:
        """URLs of the project's own custom volumes (with ``features.storage.volumes``),
        read from the pools' ``used_by`` in one request to the storage service; when it
        does not answer, none unless ``strict`` (then 503: a delete must not orphan them)."""
        p = self.projects.find(name)
        if name == DEFAULT or p is None or \
                not true(p["config"].get("features.storage.volumes")):
            return []
        try:
            reply = await self.bus.request("storage", "list",
                                           ListRequest(project=name, recursion=1))
        except CorralError:
            if strict:
                raise
            return []
        suffix = f"?project={name}"
        return sorted({u for pool in reply.metadata or [] for u in pool.get("used_by", [])
                       if "/volumes/custom/" in u and u.endswith(suffix)})

    async def project_used_by(self, name: str, strict: bool = False) -> list[str]:
        """LXD's ``used_by``: the project's instances, images, profiles and custom
        volumes."""
        insts = [url("instances", r["name"], name) for r in self.instances.cached()
                 if r.get("project", DEFAULT) == name]
        profs = [url("profiles", p["name"], name) for p in self.profiles.store.cached()
                 if p.get("project", DEFAULT) == name]
        return (sorted(insts) + sorted(await self.project_images(name, strict))
                + sorted(profs) + await self.project_volumes(name, strict))

    async def _project_in_use(self, name: str) -> bool:
        return any(u for u in await self.project_used_by(name, strict=True)
                   if not u.startswith("/1.0/profiles/default"))

    def _project_instances(self, name: str) -> list[project_limits.Instance]:
        return [project_limits.Instance.of(r) for r in self.instances.cached()
                if r.get("project", DEFAULT) == name and r.get("status") != "Deleting"]

    async def _project_public(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.projects.public(p, await self.project_used_by(p["name"]))

    @endpoint("project_list", ListRequest)
    async def project_list(self, req: ListRequest) -> Reply:
        items = [(n, await self._project_public(self.projects.require(n)))
                 for n in self.projects.names()]
        return Reply(metadata=listing("projects", items, req.recursion))

    @endpoint("project_get", ObjectRequest)
    async def project_get(self, req: ObjectRequest) -> Reply:
        p = self.projects.require(req.name)
        return Reply(metadata=await self._project_public(p), etag=project_etag(p))

    @endpoint("project_state", ObjectRequest)
    async def project_state(self, req: ObjectRequest) -> Reply:
        """``lxc project info``: usage and limits of the project's resources."""
        p = self.projects.require(req.name)
        return Reply(metadata=project_limits.state(p.get("config", {}),
                                                   self._project_instances(req.name)))

    @endpoint("project_create", CreateRequest)
    async def project_create(self, req: CreateRequest) -> Reply:
        p = await self.projects.create(req.body)
        if p["config"].get("features.profiles") == "true":
            await self.profiles.store.create(key(p["name"], DEFAULT), {
                "name": DEFAULT, "project": p["name"], "config": {}, "devices": {},
                "description": f"Default LXD profile for project {p['name']}"},
                "Profile 'default'")
        await self.events.lifecycle("project-created", self.projects.url(p["name"]),
                                    project=p["name"], requestor=req.requestor)
        return Reply(metadata=None)

    async def _project_update(self, req: ObjectRequest, patch: bool) -> Reply:
        name = req.name
        insts = self._project_instances(name)

        def check(config: dict[str, str]) -> None:
            project_limits.check_project_change(name, config, insts)

        before = self.projects.require(name)
        p = await self.projects.update(name, req.body or {}, req.etag, patch,
                                       await self._project_in_use(name), check)
        had = before["config"].get("features.profiles") == "true"
        has = p["config"].get("features.profiles") == "true"
        if name != DEFAULT and has and not had:
            await self.profiles.store.put(key(name, DEFAULT), {
                "name": DEFAULT, "project": name, "config": {}, "devices": {},
                "description": f"Default LXD profile for project {name}"})
        elif name != DEFAULT and had and not has:
            await self.profiles.store.delete(key(name, DEFAULT))
        await self.events.lifecycle("project-updated", self.projects.url(name),
                                    project=name, requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("project_update", ObjectRequest)
    async def project_update(self, req: ObjectRequest) -> Reply:
        return await self._project_update(req, patch=False)

    @endpoint("project_patch", ObjectRequest)
    async def project_patch(self, req: ObjectRequest) -> Reply:
        return await self._project_update(req, patch=True)

    @endpoint("project_rename", ObjectRequest)
    async def project_rename(self, req: ObjectRequest) -> Reply:
        new = await self.projects.rename(req.name, (req.body or {}).get("name"),
                                         not await self._project_in_use(req.name))
        found = await self.profiles.store.get(key(req.name, DEFAULT))
        if found is not None:  # an empty project has at most its own default profile
            await self.profiles.store.put(key(new["name"], DEFAULT),
                                          {**found[0], "project": new["name"]})
            await self.profiles.store.delete(key(req.name, DEFAULT))
        await self.events.lifecycle("project-renamed", self.projects.url(new["name"]),
                                    project=new["name"], context={"old_name": req.name},
                                    requestor=req.requestor)

        async def done(_op: Any) -> None:  # LXD answers a rename with an operation
            return None

        op = await self.operations.start("Renaming project", done, resources={
            "projects": [self.projects.url(new["name"])]})
        return Reply(type="async", operation=op.lxd())

    @endpoint("project_delete", ObjectRequest)
    async def project_delete(self, req: ObjectRequest) -> Reply:
        await self.projects.delete(req.name, not await self._project_in_use(req.name))
        if await self.profiles.store.get(key(req.name, DEFAULT)) is not None:
            await self.profiles.store.delete(key(req.name, DEFAULT))
        await self.events.lifecycle("project-deleted", self.projects.url(req.name),
                                    project=req.name, requestor=req.requestor)
        return Reply(metadata=None)
