"""The storage service: storage pools and their volumes on this node.

Endpoints decode, call ``pools``/``volumes``/``usage`` and publish lifecycle events.
Pool CRUD is cluster-scoped (the gateway asks ``corral.storage.<verb>``); the volume verbs
other services use are node-scoped, because a volume lives on this host's disks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.api import listing
from shared.errors import BadRequest, Conflict
from shared.filters import compile_filter
from shared.messages.storage import (
    ImageVolumeDeleteReply,
    ImageVolumeDeleteRequest,
    VolumeFromImageRequest,
    VolumeGetRequest,
    VolumeListRequest,
    VolumePathReply,
    VolumeQuotaRequest,
    VolumeRenameRequest,
    VolumeRequest,
    VolumeUsageReply,
    VolumeUsageRequest,
)
from shared.models import (
    CreateRequest,
    ListRequest,
    ObjectRequest,
    Reply,
    ServerInfoReply,
)
from shared.service import Service, endpoint, main_for
from shared.state import Store
from shared.warnings import Warnings

from . import orphans, usage
from .backup_api import VolumeBackupsMixin
from .custom_api import API_EXTENSIONS as CUSTOM_EXTENSIONS
from .custom_api import CustomVolumesMixin
from .drivers import DRIVERS
from .pools import Pools, pool_etag
from .snapshots_api import VolumeSnapshotsMixin
from .volumes import INSTANCE_KINDS, Volumes, volume_url

API_EXTENSIONS = ["storage", "resources", "storage_btrfs_mount_options",
                  "server_supported_storage_drivers", "entity_description"]


class StorageService(VolumeSnapshotsMixin, CustomVolumesMixin, VolumeBackupsMixin, Service):
    name = "storage"
    description = "Corral storage pools and volumes"

    async def setup(self) -> None:
        self.pools = Pools(await Store(self.bus, "storage_pools", cache=True).open(),
                           self.config.dir,
                           self.config.node if self.config.cluster else None, self.bus)
        self.volumes = Volumes(await Store(self.bus, "storage_volumes", cache=True).open(),
                               self.pools, self.bus, self.config.dir)
        self._drivers = await asyncio.to_thread(_supported_drivers)
        await self.pools.reconcile()
        # A pool that could not be mounted is a warning (lxc warning list), as in LXD.
        self.warnings = await Warnings(self.bus, self.events, self.config.node).open()
        await self.warnings.storage_pools(self.pools.unavailable,
                                          [r["name"] for r in self.pools.records()])
        await self.snapshots_setup()  # pools' tmp dirs emptied, copies' journal replayed
        await self.volumes.reconcile()
        self.custom_setup()  # custom volumes, and their snapshots' expiry
        self._orphans = asyncio.create_task(orphans.sweep_later(self.volumes))

    async def teardown(self) -> None:
        self._orphans.cancel()
        self.custom_teardown()

    def server_info(self) -> ServerInfoReply:
        recs = {r["name"]: r for r in self.pools.records()}
        main = recs.get("default") or next(iter(recs.values()), None)
        env: dict[str, Any] = {"storage_supported_drivers": self._drivers,
                               "storage": "", "storage_version": ""}
        if main is not None:
            env["storage"] = main["driver"]
            env["storage_version"] = next((d["Version"] for d in self._drivers
                                           if d["Name"] == main["driver"]), "")
        return ServerInfoReply(environment=env,
                               api_extensions=[*API_EXTENSIONS, *CUSTOM_EXTENSIONS])


    # -- pools ------------------------------------------------------------------------------

    @endpoint("list", ListRequest)
    async def list_pools(self, req: ListRequest) -> Reply:
        recs = self.pools.records()
        used = (await usage.used_by_all(self.bus, self.volumes, [r["name"] for r in recs])
                if req.recursion > 0 else {})
        items = [(r["name"], self.pools.public(r, used.get(r["name"], []))) for r in recs]
        return Reply(metadata=listing("storage-pools", items, req.recursion))

    @endpoint("get", ObjectRequest)
    async def get_pool(self, req: ObjectRequest) -> Reply:
        rec, _rev = await self.pools.get(req.name)
        used = await usage.used_by_all(self.bus, self.volumes, [req.name])
        return Reply(metadata=self.pools.public(rec, used[req.name], req.target),
                     etag=pool_etag(rec))

    @endpoint("create", CreateRequest)
    async def create_pool(self, req: CreateRequest) -> Reply:
        rec = await self.pools.create(req.body, req.target)
        await self.events.lifecycle("storage-pool-created", self.pools.url(rec["name"]),
                                    requestor=req.requestor)
        return Reply(metadata=None)

    async def _update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.pools.update(req.name, req.body or {}, req.etag, patch, req.target)
        await self.events.lifecycle("storage-pool-updated", self.pools.url(req.name),
                                    requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("update", ObjectRequest)
    async def update_pool(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=False)

    @endpoint("patch", ObjectRequest)
    async def patch_pool(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=True)

    @endpoint("delete", ObjectRequest)
    async def delete_pool(self, req: ObjectRequest) -> Reply:
        async with self.pools.exclusive(req.name) as rec:
            await usage.ensure_unused(self.bus, self.pools, self.volumes, rec)
            await self.pools.delete(rec)
            await self.volumes.forget_pool(req.name)
        await self.events.lifecycle("storage-pool-deleted", self.pools.url(req.name),
                                    requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("pool_member_create", CreateRequest, scope="node")
    async def pool_member_create(self, req: CreateRequest) -> Reply:
        """In a cluster: make this member's own pool (pool_members.realise_everywhere)."""
        return Reply(metadata=await self.pools.member_create(req.body))

    @endpoint("pool_member_delete", CreateRequest, scope="node")
    async def pool_member_delete(self, req: CreateRequest) -> Reply:
        """In a cluster: remove this member's own pool (pool_members.forget_everywhere)."""
        await self.pools.member_delete(req.body)
        return Reply(metadata=None)

    @endpoint("pool_member_update", CreateRequest, scope="node")
    async def pool_member_update(self, req: CreateRequest) -> Reply:
        """In a cluster: apply a config change to this member's own pool (pools.py)."""
        await self.pools.member_update(req.body)
        return Reply(metadata=None)

    @endpoint("resources", ObjectRequest)
    async def pool_resources(self, req: ObjectRequest) -> Reply:
        return Reply(metadata=await self.pools.resources(req.name))

    # -- volumes (gateway) ------------------------------------------------------------------

    @endpoint("volume_list", VolumeListRequest)
    async def list_volumes(self, req: VolumeListRequest) -> Reply:
        vols = await self.volumes.listing(req.pool, req.kind,
                                          None if req.all_projects else req.project)
        if req.recursion > 0 or req.filter:  # custom volumes with users and snapshots
            match = compile_filter(req.filter)  # lxc storage volume list POOL type=custom
            custom = await self.custom.decorate([v for v in vols if v["kind"] == "custom"])
            objs = [o for o in [self.volumes.public(v) for v in vols
                                if v["kind"] != "custom"] + custom if match(o)]
            if req.recursion > 0:
                return Reply(metadata=objs)
            vols = [{"kind": o["type"], **o} for o in objs if "/" not in o["name"]]
        return Reply(metadata=[volume_url(req.pool, v["kind"], v["name"],
                                          v.get("project", "default")) for v in vols])

    @endpoint("volume_get", VolumeGetRequest)
    async def get_volume(self, req: VolumeGetRequest) -> Reply:
        vol = await self.volumes.get(req.pool, req.kind, req.project, req.name)
        return Reply(metadata=self.volumes.public(vol))

    @endpoint("volume_remove", VolumeGetRequest)
    async def remove_volume(self, req: VolumeGetRequest) -> Reply:
        """``DELETE /1.0/storage-pools/<pool>/volumes/<kind>/<name>``: the last resort for
        a volume no instance owns any more (left by a crash). An instance's own volume goes
        with the instance, an image's with the image: both are refused (400)."""
        vol = await self.volumes.get(req.pool, req.kind, req.project, req.name)
        project = vol.get("project", "default")
        what = f"Storage volume {req.kind}/{req.name}"
        if req.kind == "image":
            raise BadRequest(f"{what} is an image's: it goes when the image is deleted")
        if vol.get("creating"):
            raise Conflict(f"{what} is being made; try again when its create has ended")
        if req.kind in INSTANCE_KINDS and \
                set(self.volumes.used_by(vol)) & await usage.instance_urls(self.bus):
            raise BadRequest(f"{what} belongs to instance {req.name!r}: delete the instance "
                             "instead")
        await self.volumes.delete(VolumeRequest(project=project, pool=req.pool,
                                                kind=req.kind, name=req.name))
        await self.events.lifecycle(
            "storage-volume-deleted", volume_url(req.pool, req.kind, req.name, project),
            project=project, requestor=req.requestor)
        return Reply(metadata=None)

    # -- volumes (other services, this node) ------------------------------------------------

    @endpoint("volume_from_image", VolumeFromImageRequest, scope="node")
    async def volume_from_image(self, req: VolumeFromImageRequest) -> Reply:
        path = await self.volumes.from_image(req)
        return Reply(metadata=VolumePathReply(path=str(path)).model_dump())

    # volume_path (of a volume or of its snapshot): see VolumeSnapshotsMixin.

    @endpoint("volume_delete", VolumeRequest, scope="node")
    async def volume_delete(self, req: VolumeRequest) -> Reply:
        await self.volumes.delete(req)
        return Reply(metadata=None)

    @endpoint("volume_rename", VolumeRenameRequest, scope="node")
    async def volume_rename(self, req: VolumeRenameRequest) -> Reply:
        path = await self.volumes.rename(req)
        return Reply(metadata=VolumePathReply(path=str(path)).model_dump())

    @endpoint("volume_quota", VolumeQuotaRequest, scope="node")
    async def volume_quota(self, req: VolumeQuotaRequest) -> Reply:
        await self.volumes.set_quota(req)
        return Reply(metadata=None)

    @endpoint("volume_usage", VolumeUsageRequest, scope="node")
    async def volume_usage(self, req: VolumeUsageRequest) -> Reply:
        """Disk usage of many volumes in one request (instance state, ``lxc list -c D``)."""
        usage_ = await self.volumes.usage(req.volumes)
        return Reply(metadata=VolumeUsageReply(usage=usage_).model_dump())

    @endpoint("image_volume_delete", ImageVolumeDeleteRequest, scope="node")
    async def image_volume_delete(self, req: ImageVolumeDeleteRequest) -> Reply:
        pools = await self.volumes.delete_image(req.fingerprint)
        return Reply(metadata=ImageVolumeDeleteReply(pools=pools).model_dump())


def _supported_drivers() -> list[dict[str, Any]]:
    """LXD's ``storage_supported_drivers``: the drivers whose host check passes."""
    out = []
    for name in sorted(DRIVERS):
        cls = DRIVERS[name]
        try:
            cls.check_host()
        except Exception:
            continue
        info = cls.info()
        out.append({"Name": name, "Version": info.version, "Remote": info.remote})
    return out


main = main_for(StorageService)
