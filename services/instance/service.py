"""The instance service: instances (LXC containers, QEMU VMs) and profiles on this node.

Thin: endpoints decode, call the logic modules (``create``, ``lifecycle``, ``update``,
``reconcile``), publish lifecycle events and answer. Slow work runs as an
LXD operation; fast checks answer with an error envelope at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared import codec, filters
from shared.api import listing, url
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.messages.instance import (
    InstanceListRequest,
    NetworkUsersRequest,
    StatePutRequest,
    about_one_instance,
)
from shared.models import (
    CreateRequest,
    ListRequest,
    ObjectRequest,
    Reply,
    ServerInfoReply,
)
from shared.service import Service, endpoint, main_for
from shared.state import Store, key
from shared.warnings import Warnings

from . import (
    create,
    disk_usage,
    ephemeral,
    host_checks,
    hotplug,
    lifecycle,
    reconcile,
    resources,
    update,
    vm_migrate,
)
from .backups_api import API_EXTENSIONS as BACKUP_EXTENSIONS
from .backups_api import BackupsMixin
from .context import Context
from .copy_api import API_EXTENSIONS as COPY_EXTENSIONS
from .copy_api import CopyPublishMixin
from .drivers.base import InstanceDriver
from .drivers.lxc import LXCDriver
from .drivers.router import CONTAINER, VM, DriverRouter
from .exec_api import API_EXTENSIONS as IO_EXTENSIONS
from .exec_api import ExecFilesConsoleMixin
from .idmap import ensure_subids
from .metadata_api import API_EXTENSIONS as METADATA_EXTENSIONS
from .metadata_api import MetadataMixin
from .metrics_api import MetricsMixin
from .names import host_of
from .profiles import Profiles, profile_etag
from .projects import Projects
from .projects import effective as projects_effective
from .projects_api import PROJECT_EXTENSIONS, ProjectsMixin
from .records import instance_url, public, record_etag
from .remote import Remote
from .snapshots_api import API_EXTENSIONS as SNAPSHOT_EXTENSIONS
from .snapshots_api import InstanceSnapshotsMixin
from .vm_migrate_api import VmMigrateMixin

# What the stock client checks before list/launch/config (see docs/architecture.md).
# container_backup: only the (empty) backup list so far, which `lxc info` requires.
API_EXTENSIONS = ["container_full", "api_filtering", "container_last_used_at",
                  "instance_nic_network", "container_backup", "instances"]
# Creates, state changes and deletes one instance service runs at once (see _admit).
MAX_OPERATIONS = 128
# Declared only while libvirtd answers (``lxc launch --vm`` checks them).
VM_EXTENSIONS = ["virtual-machines"]


def _uses_network(dev: dict[str, str], network: str) -> bool:
    if dev.get("type") != "nic":
        return False
    return dev.get("network") == network or (
        dev.get("nictype") in ("bridged", "macvlan") and dev.get("parent") == network)


class InstanceService(InstanceSnapshotsMixin, CopyPublishMixin, BackupsMixin, ProjectsMixin,
                      ExecFilesConsoleMixin, MetadataMixin, MetricsMixin, VmMigrateMixin,
                      Service):
    name = "instance"
    description = "Corral instances (LXC containers, QEMU VMs) and profiles"

    async def setup(self) -> None:
        await asyncio.to_thread(ensure_subids)
        self.drivers = DriverRouter(LXCDriver(self.config.dir / "lxc"),
                                    self.config.dir / "virtual-machines")
        self.remote = Remote(self.bus, self.config.node)
        self.instances = await Store(self.bus, "instances", cache=True).open()
        # key -> (revision, status, record, its JSON): see _listed_json
        self._list_json: dict[str, tuple[int | None, str | None, dict[str, Any], bytes]] = {}
        self.profiles = Profiles(await Store(self.bus, "profiles", cache=True).open())
        self.projects = Projects(await Store(self.bus, "projects", cache=True).open())
        self.snapshots = await Store(self.bus, "instance_snapshots", cache=True).open()
        self.ctx = Context(instances=self.instances, profiles=self.profiles,
                           remote=self.remote, drivers=self.drivers, log=self.log,
                           projects=self.projects, snapshots=self.snapshots,
                           node=self.config.node if self.config.cluster else "")
        # The bucket read afresh (no cache): the records other nodes wrote since we started.
        self.shared_instances = await Store(self.bus, "instances").open()
        self._locks: dict[str, asyncio.Lock] = {}
        self._cleanup = await reconcile.reconcile(self.ctx)
        self._cleanup.append(asyncio.create_task(vm_migrate.reconcile(self.ctx)))
        await hotplug.adopt(self.ctx)  # proxy forwarders that outlived the last run
        self._snapshot_tasks = await self.snapshot_setup()  # snapshots_api
        self.warnings = await Warnings(self.bus, self.events, self.config.node).open()
        self._host_checks = asyncio.create_task(
            host_checks.check(self.warnings, self.drivers, self.log))
        # Ephemeral instances that stopped from inside, or while we were down, go away.
        self._ephemeral = asyncio.create_task(
            ephemeral.watch(self.ctx, self.lock, self._ephemeral_deleted))

    async def teardown(self) -> None:
        self._ephemeral.cancel()
        for task in self._snapshot_tasks:
            task.cancel()

    async def _ephemeral_deleted(self, rec: dict[str, Any]) -> None:
        await self.events.lifecycle("instance-deleted", instance_url(rec),
                                    project=rec["project"])

    def server_info(self) -> ServerInfoReply:
        """``driver: lxc | qemu`` as LXD reports several; qemu only while libvirtd answers
        (a socket check and a cached connection: fast enough for the event loop)."""
        versions = self.drivers.versions()
        env = {"driver": " | ".join(versions), "driver_version": " | ".join(versions.values()),
               # Corral's own field: what confines containers here (detected, not assumed)
               "confinement": host_checks.confinement()}
        vm = VM_EXTENSIONS if "qemu" in versions else []
        return ServerInfoReply(environment=env,
                               api_extensions=[*API_EXTENSIONS, *IO_EXTENSIONS, *vm,
                                               *resources.API_EXTENSIONS, *METADATA_EXTENSIONS,
                                               *PROJECT_EXTENSIONS, *SNAPSHOT_EXTENSIONS,
                                               *COPY_EXTENSIONS, *BACKUP_EXTENSIONS])

    def lock(self, project: str, name: str) -> asyncio.Lock:
        """One state change at a time per instance (start racing delete, ...)."""
        return self._locks.setdefault(key(project, name), asyncio.Lock())

    # -- bounded work ----------------------------------------------------------------------

    max_operations: int = MAX_OPERATIONS
    _working: int = 0

    def _admit(self) -> None:
        """503 before any change when this process already runs ``max_operations``
        creates, state changes and deletes: refused with a reason, never queued without
        end (each holds threads, bus requests and host work)."""
        if self._working >= self.max_operations:
            raise Unavailable(f"The instance service is busy: {self._working} operations "
                              "running (creates, state changes, deletes), try again")

    async def _start_work(self, description: str, run: Any, **kw: Any) -> Any:
        """``operations.start`` for the bounded kinds of work: counted until ``run`` ends."""
        self._admit()
        self._working += 1

        async def counted(op: Any) -> Any:
            try:
                return await run(op)
            finally:
                self._working -= 1

        try:
            return await self.operations.start(description, counted, **kw)
        except BaseException:
            self._working -= 1  # no task was made: ``counted`` will never run
            raise

    # -- what the exec/files/console mixin needs ----------------------------------------

    async def node_of(self, verb: str, body: Any) -> str | None:
        """The node a request about one instance goes to: where it is located."""
        name = getattr(body, "name", None)
        if not isinstance(name, str) or not name or not about_one_instance(verb):
            return None
        found = await self.instances.get(key(getattr(body, "project", "default"),
                                             name.split("/", 1)[0]))
        return (found[0].get("location") or None) if found is not None else None

    async def require_instance(self, project: str, name: str) -> dict[str, Any]:
        found = await self.instances.get(key(project, name))
        if found is None or found[0].get("status") == "Creating":
            raise NotFound("Instance not found")
        if not self.ctx.is_local(found[0]):
            raise Conflict(f"Instance {name!r} is located on {found[0].get('location')!r}, "
                           f"not on this node ({self.config.node}): ask its node")
        return found[0]

    async def instance_status(self, rec: dict[str, Any]) -> str:
        return await lifecycle.host_status(self.ctx, rec)

    def driver_of(self, rec: dict[str, Any]) -> InstanceDriver:
        return self.drivers.for_instance(rec)

    @endpoint("resources", ListRequest, scope="node")
    async def host_resources(self, _req: ListRequest) -> Reply:
        """``GET /1.0/resources``: this node's hardware (asked of the node, not any replica)."""
        return Reply(metadata=await asyncio.to_thread(resources.read))

    # -- instances ------------------------------------------------------------------------

    def _records(self, project: str, all_projects: bool = False,
                 every: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return sorted((r for r in (self.instances.cached() if every is None else every)
                       if all_projects or r.get("project", "default") == project),
                      key=lambda r: r["name"])

    @endpoint("list", InstanceListRequest)
    async def list_instances(self, req: InstanceListRequest) -> Reply:
        if req.target and req.target != self.ctx.node:
            return await self._list_elsewhere(req)
        recs = self._records(req.project, req.all_projects,
                             self.ctx.local() if req.target else None)
        if req.recursion <= 0 and not req.filter:
            return Reply(metadata=[instance_url(r) for r in recs])
        host = await self._host_statuses(recs)
        if req.recursion == 1 and not req.filter:
            return Reply(metadata=self._listed_json(recs, host))
        objs = [public(r, host.get(host_of(r), r.get("status"))) for r in recs]
        if req.filter:
            groups = filters.parse(req.filter)
            objs = [o for o in objs if filters.matches(o, groups)]
        if req.recursion <= 0:
            return Reply(metadata=[url("instances", o["name"], o["project"]) for o in objs])
        if req.recursion >= 2:
            shown = {host_of(o) for o in objs if host_of(o) in host}
            shown_recs = [r for r in recs if host_of(r) in shown]
            by_key = {key(r["project"], r["name"]): r for r in recs}
            mine = [by_key[key(o["project"], o["name"])] for o in objs]
            # the host reads and the two storage requests at once (disk_usage.fetch)
            states, usage, all_snaps = await asyncio.gather(
                asyncio.to_thread(self.drivers.state_many, shown_recs),
                disk_usage.fetch(self.bus, self.config.node, shown_recs),
                self.snapshots_of(mine))
            if usage is not None:
                disk_usage.merge(states, *usage)
            for o, snaps in zip(objs, all_snaps, strict=True):
                o.update(state=states.get(host_of(o)), backups=None, snapshots=snaps or None)
        return Reply(metadata=objs)

    async def _host_statuses(self, recs: list[dict[str, Any]]) -> dict[str, str]:
        """{host name: status} for a list, read live (a container stopped a moment ago
        reads Stopped in the very next list).

        Containers only: read in this thread. LXC's list of active containers and one
        directory scan cost ~1.3 ms for 1000, less than the hop to a worker thread and
        back costs a 10-instance list. With VMs among them, libvirt is asked, which
        may block: in a worker thread, as before."""
        if any(r.get("type") == VM for r in recs):
            return await asyncio.to_thread(self.drivers.list_host)
        return self.drivers.for_type(CONTAINER).list_host()

    async def _list_elsewhere(self, req: InstanceListRequest) -> Reply:
        """The instances located on ``req.target``, a node that did not answer: read
        afresh from the bucket, with status Error as LXD lists an offline member's."""
        every = [r for r in (await self.shared_instances.items()).values()
                 if r.get("location") == req.target and r.get("status") != "Creating"]
        recs = self._records(req.project, req.all_projects, every)
        objs = [public(r, "Error") for r in recs]
        if req.filter:
            groups = filters.parse(req.filter)
            objs = [o for o in objs if filters.matches(o, groups)]
        if req.recursion <= 0:
            return Reply(metadata=[url("instances", o["name"], o["project"]) for o in objs])
        if req.recursion >= 2:
            for o in objs:
                o.update(state=None, backups=None, snapshots=None)
        return Reply(metadata=objs)

    def _listed_json(self, recs: list[dict[str, Any]], host: dict[str, str]
                     ) -> codec.RawJSON:
        """``recursion=1`` as JSON bytes, each instance encoded once per (KV revision,
        status) and the pieces joined.

        Why: 1000 instances are ~2.3 MB of JSON, and encoding it again for every list was
        most of the request's CPU. The record object itself is part of the key too, so a
        record replaced in the cache without a new revision is encoded again.
        """
        cache = self._list_json
        parts = []
        for r in recs:
            k = key(r["project"], r["name"])
            status = host.get(host_of(r), r.get("status"))
            rev = self.instances.cached_revision(k)
            hit = cache.get(k)
            if hit is None or hit[0] != rev or hit[1] != status or hit[2] is not r:
                hit = (rev, status, r, codec.encode_json(public(r, status)))
                cache[k] = hit
            parts.append(hit[3])
        every = self.instances.cached()
        if len(cache) > len(every):  # drop deleted instances
            live = {key(r["project"], r["name"]) for r in every}
            for k in [k for k in cache if k not in live]:
                del cache[k]
        if not parts:
            return codec.RawJSON(b"[]")
        # "[", then each object and a comma, then "]": joined once, into the reply itself
        pieces = [b","] * (2 * len(parts) + 1)
        pieces[1::2] = parts
        pieces[0], pieces[-1] = b"[", b"]"
        return codec.RawJSON(pieces)

    @endpoint("get", ObjectRequest)
    async def get_instance(self, req: ObjectRequest) -> Reply:
        rec = await self.require_instance(req.project, req.name)
        obj = public(rec, await self.instance_status(rec))
        if (req.body or {}).get("recursion", 0) >= 1:
            snaps, = await self.snapshots_of([rec])
            obj.update(state=await self._state(rec), backups=None, snapshots=snaps or None)
        return Reply(metadata=obj, etag=record_etag(rec))

    @endpoint("state", ObjectRequest)
    async def get_state(self, req: ObjectRequest) -> Reply:
        rec = await self.require_instance(req.project, req.name)
        return Reply(metadata=await self._state(rec))

    async def _state(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The driver's state plus the root disk's usage (from the storage service)."""
        state = await asyncio.to_thread(self.driver_of(rec).state, host_of(rec))
        await disk_usage.fill(self.bus, self.config.node, [rec], {host_of(rec): state})
        return state

    def _resources(self, name: str, project: str, containers: bool = False
                   ) -> dict[str, list[str]]:
        res = {"instances": [url("instances", name, project)]}
        if containers:
            res["containers"] = [url("containers", name, project)]
        return res

    @endpoint("create", CreateRequest)
    async def create_instance(self, req: CreateRequest) -> Reply:
        source = req.body.get("source")
        if isinstance(source, dict) and source.get("type") == "copy":
            return await self.copy_instance(req)  # copy_api.CopyPublishMixin
        self._admit()  # before the name is reserved
        rec, image = await create.prepare(self.ctx, req.body, req.project)
        start = bool(req.body.get("start"))

        async def run(_op) -> None:
            async with self.lock(rec["project"], rec["name"]):
                made = await create.build(self.ctx, rec, image)
                await self.events.lifecycle(
                    "instance-created", instance_url(made), project=made["project"],
                    context={"storage-pool": made["pool"], "type": made["type"]},
                    requestor=req.requestor)
                if start:
                    await lifecycle.start(self.ctx, made)
                    await self.events.lifecycle("instance-started", instance_url(made),
                                                project=made["project"],
                                                requestor=req.requestor)

        try:
            op = await self._start_work(
                "Creating instance", run, project=req.project,
                resources=self._resources(rec["name"], req.project, containers=True))
        except BaseException:  # no operation, so nothing will build or undo: free the name
            await self.instances.delete(key(rec["project"], rec["name"]))
            raise
        return Reply(type="async", operation=op.lxd())

    @endpoint("state_put", StatePutRequest)
    async def put_state(self, req: StatePutRequest) -> Reply:
        rec = await self.require_instance(req.project, req.name)
        await lifecycle.check(self.ctx, rec, req.action)

        async def run(_op) -> None:
            async with self.lock(req.project, req.name):
                current = await self.require_instance(req.project, req.name)
                action = await lifecycle.change(self.ctx, current, req)
                gone = req.action == "stop" and await ephemeral.after_stop(self.ctx, current)
            await self.events.lifecycle(action, instance_url(rec), project=req.project,
                                        requestor=req.requestor)
            if gone:  # ephemeral: deleted by its stop, as in LXD
                await self.events.lifecycle("instance-deleted", instance_url(rec),
                                            project=req.project, requestor=req.requestor)

        op = await self._start_work(lifecycle.DESCRIPTIONS[req.action], run,
                                    project=req.project,
                                    resources=self._resources(req.name, req.project))
        return Reply(type="async", operation=op.lxd())

    async def _done_op(self, description: str, name: str, project: str) -> Reply:
        """LXD answers PUT/PATCH/rename with an operation; ours did its work already."""
        async def run(_op) -> None:
            return None

        op = await self.operations.start(description, run, project=project,
                                         resources=self._resources(name, project))
        return Reply(type="async", operation=op.lxd())

    async def _update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.require_instance(req.project, req.name)
        async with self.lock(req.project, req.name):
            rec = await update.update(self.ctx, req.project, req.name, req.body or {},
                                      req.etag, patch)
        await self.events.lifecycle("instance-updated", instance_url(rec),
                                    project=req.project, requestor=req.requestor)
        return await self._done_op("Updating instance", req.name, req.project)

    @endpoint("update", ObjectRequest)
    async def update_instance(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=False)

    @endpoint("patch", ObjectRequest)
    async def patch_instance(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=True)

    @endpoint("rename", ObjectRequest)
    async def rename_instance(self, req: ObjectRequest) -> Reply:
        if (req.body or {}).get("migration") and (req.body or {}).get("pool"):
            return await self.move_to_pool(req)  # lxc move --storage: copy_api
        await self.require_instance(req.project, req.name)
        async with self.lock(req.project, req.name):
            new = await update.rename(self.ctx, req.project, req.name, req.body or {})
        await self.events.lifecycle("instance-renamed", instance_url(new),
                                    project=req.project, context={"old_name": req.name},
                                    requestor=req.requestor)
        return await self._done_op("Renaming instance", new["name"], req.project)

    @endpoint("delete", ObjectRequest)
    async def delete_instance(self, req: ObjectRequest) -> Reply:
        rec = await self.require_instance(req.project, req.name)
        # "Error" (a config LXC cannot load, ...) must stay deletable: the driver itself
        # refuses to delete what still runs.
        if await self.instance_status(rec) not in ("Stopped", "Error"):
            raise BadRequest("The instance is currently running, stop it first")

        async def run(_op) -> None:
            async with self.lock(req.project, req.name):
                await update.delete(self.ctx, rec)
            await self.events.lifecycle("instance-deleted", instance_url(rec),
                                        project=req.project, requestor=req.requestor)

        op = await self._start_work("Deleting instance", run, project=req.project,
                                    resources=self._resources(req.name, req.project))
        return Reply(type="async", operation=op.lxd())

    @endpoint("network_users", NetworkUsersRequest)
    async def network_users(self, req: NetworkUsersRequest) -> Reply:
        return Reply(metadata=sorted(
            instance_url(r) for r in self.instances.cached()
            if any(_uses_network(d, req.name)
                   for d in (r.get("expanded_devices") or {}).values())))

    def _profile_users(self, project: str, profile: str) -> list[dict[str, Any]]:
        """Records of the instances using ``project``'s profile ``profile``: those of
        ``project`` and of every project that uses ``project``'s profiles (one without
        ``features.profiles`` uses ``default``'s)."""
        out = []
        for v in self.instances.cached():
            if profile not in v.get("profiles", []):
                continue
            own = v.get("project", "default")
            found = self.projects.find(own)
            if (own if found is None else projects_effective(found, "profiles")) == project:
                out.append(v)
        return out

    def used_by(self, project: str, profile: str) -> list[str]:
        """Instances whose profile list names this profile (cached: no bus round trip)."""
        return [url("instances", v["name"], v.get("project", "default"))
                for v in self._profile_users(project, profile)]

    async def _reexpand(self, project: str, profile: str) -> None:
        """A profile changed: re-expand (and apply live) every instance using it."""
        failed: list[tuple[str, Exception]] = []
        for rec in self._profile_users(project, profile):
            if rec.get("status") == "Creating":
                continue
            async with self.lock(rec["project"], rec["name"]):
                found = await self.instances.get(key(rec["project"], rec["name"]))
                if found is None:
                    continue
                cur, rev = found
                try:
                    await update.apply(self.ctx, cur, rev, cur["config"], cur["devices"],
                                       cur["profiles"], cur["description"])
                except Exception as exc:  # keep going: apply to every instance it can
                    self.log.warning("profile change not applied to instance",
                                     instance=rec["name"], error=str(exc))
                    failed.append((rec["name"], exc))
        if failed:  # the caller hears it, not only the log
            code = failed[0][1].code if isinstance(failed[0][1], CorralError) else 500
            raise CorralError(f"Profile {profile!r} was saved but not applied to " + "; ".join(
                f"{n!r} ({getattr(e, 'message', str(e))})" for n, e in failed), code)

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

    async def _try_profile(self, project: str, profile: dict[str, Any]) -> None:
        """Refuse (400 naming the instance) a profile change one of its instances cannot
        take; runs before the profile is saved."""
        for rec in self._profile_users(project, profile["name"]):
            if rec.get("status") == "Creating":
                continue
            try:
                await update.plan(self.ctx, rec, rec["config"], rec["devices"],
                                  rec["profiles"], override=profile)
            except BadRequest as exc:
                raise BadRequest(f"Profile {profile['name']!r} cannot be applied to instance "
                                 f"{rec['name']!r}: {exc.message}") from None

    async def _profile_update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.profiles.update(req.project, req.name, req.body or {}, req.etag, patch,
                                   check=lambda p: self._try_profile(req.project, p))
        await self._reexpand(req.project, req.name)
        await self.events.lifecycle("profile-updated", self.profiles.url(req.name, req.project),
                                    project=req.project, requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("profile_update", ObjectRequest)
    async def update_profile(self, req: ObjectRequest) -> Reply:
        return await self._profile_update(req, patch=False)

    @endpoint("profile_patch", ObjectRequest)
    async def patch_profile(self, req: ObjectRequest) -> Reply:
        return await self._profile_update(req, patch=True)

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
