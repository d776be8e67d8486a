"""Custom storage volumes: ``/1.0/storage-pools/<pool>/volumes/custom`` (the gateway's
cluster-scoped verbs), their snapshots, copies, moves, backups (export/import) and the
background pass that takes scheduled snapshots and prunes expired ones.

A mixin of :class:`services.storage.service.StorageService`. Sync or async as LXD 5.0
answers each (the stock client waits only where it expects an operation): create,
update, rename and delete are sync; copy, move, import and the snapshot and backup verbs
are operations. The logic is in :mod:`.custom` (volumes, snapshots, users),
:mod:`.custom_backups`, :mod:`.custom_users` and :mod:`.custom_config` (request checks).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from typing import Any

from shared.errors import BadRequest, Conflict
from shared.log import get_logger
from shared.messages.custom_volumes import CustomVolumeRequest
from shared.messages.storage import VolumeRef
from shared.models import Reply
from shared.service import endpoint

from .custom import KIND, CustomVolumes, snapshot_url
from .custom_backups import BackupsPost, CustomBackups
from .custom_backups import public as backup_public
from .custom_config import (
    SnapshotPut,
    SnapshotsPost,
    StorageVolumePost,
    StorageVolumePut,
    StorageVolumesPost,
    next_snapshot_name,
    parse_body,
    snapshot_expiry,
)
from .drivers.util import parse_size, validate_name
from .volumes import volume_url

log = get_logger(component="storage")
# LXD's extensions for what this mixin implements (merged into GET /1.0).
API_EXTENSIONS = ["storage_api_volume_rename", "storage_api_local_volume_handling",
                  "storage_api_volume_snapshots", "storage_volume_state",
                  "custom_volume_refresh", "custom_block_volumes", "storage_api_project",
                  "storage_volumes_all_projects", "custom_volume_snapshot_expiry",
                  "custom_volume_backup", "backup_override_name", "backup_compression",
                  "storage_volume_state_total", "storage_volume_api_filtering",
                  "volume_snapshot_scheduling", "storage_volume_project_move"]
# Seconds between passes for scheduled and expired snapshots and backups (a look at
# cached records: cheap).
PRUNE_INTERVAL = float(os.environ.get("CORRAL_SNAPSHOT_PRUNE_INTERVAL") or 10.0)


class CustomVolumesMixin:
    """Custom volume CRUD, snapshots, copies and moves (the service's endpoints)."""

    custom: CustomVolumes
    custom_backups: CustomBackups

    def custom_setup(self) -> None:
        """Called from the service's setup: the logic objects and the background pass."""
        self.custom = CustomVolumes(self.volumes, self.pools, self.bus)  # type: ignore[attr-defined]
        self.custom_backups = CustomBackups(self.custom, self.bus)  # type: ignore[attr-defined]
        self._custom_pruner = asyncio.create_task(self._custom_prune_loop())

    def custom_teardown(self) -> None:
        task = getattr(self, "_custom_pruner", None)
        if task is not None:
            task.cancel()

    async def _custom_prune_loop(self) -> None:
        """At start, frozen copies of backups that were never recorded go; then every
        PRUNE_INTERVAL: scheduled snapshots due since the last pass, then expired
        snapshots and backups go."""
        last = datetime.now(timezone.utc)
        try:
            for gone in await self.custom_backups.sweep_frozen():
                log.warning("removed a frozen volume backup no record names", backup=gone)
        except Exception as exc:
            log.warning("frozen volume backups not swept", error=str(exc))
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            now = datetime.now(timezone.utc)
            try:
                for rec, snap in await self.custom.scheduled(last, now):
                    project = rec.get("project", "default")
                    await self.events.lifecycle(  # type: ignore[attr-defined]
                        "storage-volume-snapshot-created",
                        snapshot_url(rec["pool"], rec["name"], snap, project),
                        project=project)
            except Exception as exc:  # never let the schedule take the service down
                log.warning("scheduled volume snapshots not taken", error=str(exc))
            last = now
            try:
                for gone in await self.custom.prune_expired():
                    log.info("expired volume snapshot removed", snapshot=gone)
                for gone in await self.custom_backups.prune_expired():
                    log.info("expired volume backup removed", backup=gone)
            except Exception as exc:  # never let pruning take the service down
                log.warning("expired volume snapshots not pruned", error=str(exc))

    # -- helpers ----------------------------------------------------------------------------

    async def _custom_event(self, action: str, source: str, req: CustomVolumeRequest,
                            context: dict[str, Any] | None = None) -> None:
        await self.events.lifecycle(action, source, project=req.project,  # type: ignore[attr-defined]
                                    context=context, requestor=req.requestor)

    async def _custom_operation(self, description: str, req: CustomVolumeRequest, run: Any,
                                resources: dict[str, list[str]]) -> Reply:
        op = await self.operations.start(description, run, resources=resources,  # type: ignore[attr-defined]
                                         project=req.request_project)
        return Reply(type="async", operation=op.lxd())

    # -- volumes ----------------------------------------------------------------------------

    @endpoint("custom_list", CustomVolumeRequest)
    async def custom_list(self, req: CustomVolumeRequest) -> Reply:
        return Reply(metadata=await self.custom.listing(
            req.pool, None if req.all_projects else req.project, req.recursion, req.filter))

    @endpoint("custom_get", CustomVolumeRequest)
    async def custom_get(self, req: CustomVolumeRequest) -> Reply:
        obj, tag = await self.custom.get(req.pool, req.project, req.name)
        return Reply(metadata=obj, etag=tag)

    @endpoint("custom_state", CustomVolumeRequest)
    async def custom_state(self, req: CustomVolumeRequest) -> Reply:
        """LXD's StorageVolumeState: bytes used (btrfs qgroups; none on dir)."""
        rec = await self.custom.record(req.pool, req.project, req.name)
        used = (await self.volumes.usage([VolumeRef(  # type: ignore[attr-defined]
            project=req.project, pool=req.pool, kind=KIND, name=req.name)]))[0]
        if used is None:
            return Reply(metadata={"usage": None})
        size = rec.get("config", {}).get("size", "")
        return Reply(metadata={"usage": {"used": used,
                                         "total": parse_size(size) if size else 0}})

    @endpoint("custom_create", CustomVolumeRequest)
    async def custom_create(self, req: CustomVolumeRequest) -> Reply:
        body = parse_body(StorageVolumesPost, req.body)
        if body.type not in (None, "", KIND):
            raise BadRequest(f"Currently not allowed to create storage volumes of type "
                             f"{body.type!r}")
        if not body.name:
            raise BadRequest("No name provided")
        source = body.source
        if source is not None and source.type not in (None, ""):
            if source.type == "copy":
                return await self._custom_copy(req, body)
            if source.type == "migration":
                raise BadRequest("Volume migration between servers is not supported: copy "
                                 "within this server (source type 'copy')")
            raise BadRequest(f"Unknown source type {source.type!r}")
        rec = await self.custom.create(req.pool, req.project, body.name,
                                       body.description or "", body.config,
                                       body.content_type)
        await self._custom_event("storage-volume-created",
                                 volume_url(req.pool, KIND, rec["name"], req.project), req)
        return Reply(metadata=None)

    async def _custom_copy(self, req: CustomVolumeRequest, body: StorageVolumesPost) -> Reply:
        """``source: {type: copy, pool, name, volume_only, refresh}`` (an operation)."""
        src = body.source
        assert src is not None
        if not src.name:
            raise BadRequest("No source volume name supplied")
        src_pool = src.pool or req.pool
        src_project = src.project or req.project
        name = body.name or ""
        await self.pools.get(src_pool)  # type: ignore[attr-defined]
        await self.pools.get(req.pool)  # type: ignore[attr-defined]
        exists = await self.volumes.store.get(  # type: ignore[attr-defined]
            self.custom.key(req.pool, req.project, name))
        if exists is not None and not src.refresh:
            raise Conflict("Volume by that name already exists")
        target = volume_url(req.pool, KIND, name, req.project)

        async def run(_op: Any) -> None:
            if exists is not None:
                await self.custom.refresh(req.pool, req.project, name, src_pool,
                                          src_project, src.name or "", bool(src.volume_only))
                await self._custom_event("storage-volume-updated", target, req)
                return
            await self.custom.copy(req.pool, req.project, name, body.description,
                                   body.config, src_pool, src_project, src.name or "",
                                   bool(src.volume_only), body.content_type)
            await self._custom_event("storage-volume-created", target, req)

        return await self._custom_operation("Copying storage volume", req, run,
                                            {"storage_volumes": [target]})

    async def _custom_update(self, req: CustomVolumeRequest, patch: bool) -> Reply:
        body = parse_body(StorageVolumePut, req.body)
        await self.custom.update(req.pool, req.project, req.name,
                                 body.model_dump(exclude_unset=True), req.etag, patch)
        url = volume_url(req.pool, KIND, req.name, req.project)
        if body.restore:
            await self._custom_event("storage-volume-restored", url, req,
                                     {"snapshot": body.restore})
        if not body.restore or body.config is not None or body.description is not None:
            await self._custom_event("storage-volume-updated", url, req)
        return Reply(metadata=None)

    @endpoint("custom_update", CustomVolumeRequest)
    async def custom_update(self, req: CustomVolumeRequest) -> Reply:
        return await self._custom_update(req, patch=False)

    @endpoint("custom_patch", CustomVolumeRequest)
    async def custom_patch(self, req: CustomVolumeRequest) -> Reply:
        return await self._custom_update(req, patch=True)

    @endpoint("custom_rename", CustomVolumeRequest)
    async def custom_rename(self, req: CustomVolumeRequest) -> Reply:
        """POST on the volume: a rename (sync), or a move (operation) to another pool
        (``{pool}``) or project (``{project}``, one with features.storage.volumes: the
        gateway checked)."""
        body = parse_body(StorageVolumePost, req.body)
        if body.migration:
            raise BadRequest("Volume migration between servers is not supported")
        new_name = body.name or req.name
        new_pool = body.pool or req.pool
        new_project = body.project or req.project
        old_url = volume_url(req.pool, KIND, req.name, req.project)
        if (new_pool, new_project) != (req.pool, req.project):
            await self.pools.get(new_pool)  # type: ignore[attr-defined]
            await self.custom.record(req.pool, req.project, req.name)
            await self.custom._holders(req.pool, req.project, req.name)  # 400 if running
            if new_project != req.project:
                users = (await self.custom.users([await self.custom.record(
                    req.pool, req.project, req.name)], strict=True))[
                        (req.pool, req.project, req.name)]
                if users:
                    raise BadRequest(f"Storage volume custom/{req.name} is in use by "
                                     f"{', '.join(users)}: detach it before moving it to "
                                     "another project")
            new_url = volume_url(new_pool, KIND, new_name, new_project)

            async def run(_op: Any) -> None:
                await self.custom.move(req.pool, req.project, req.name, new_pool, new_name,
                                       before=self.custom_backups.drop_all,
                                       new_project=new_project)
                await self.events.lifecycle(  # type: ignore[attr-defined]
                    "storage-volume-created", new_url, project=new_project,
                    requestor=req.requestor)
                await self._custom_event("storage-volume-deleted", old_url, req)

            return await self._custom_operation("Moving storage volume", req, run,
                                                {"storage_volumes": [old_url]})
        if not body.name:
            raise BadRequest("No name provided")
        await self.custom.rename(req.pool, req.project, req.name, new_name)
        await self._custom_event("storage-volume-renamed",
                                 volume_url(req.pool, KIND, new_name, req.project), req,
                                 {"old_name": req.name})
        return Reply(metadata=None)

    @endpoint("custom_delete", CustomVolumeRequest)
    async def custom_delete(self, req: CustomVolumeRequest) -> Reply:
        await self.custom.delete(req.pool, req.project, req.name,
                                 before=self.custom_backups.drop_all)
        await self._custom_event("storage-volume-deleted",
                                 volume_url(req.pool, KIND, req.name, req.project), req)
        return Reply(metadata=None)

    # -- snapshots --------------------------------------------------------------------------

    @endpoint("custom_snapshot_list", CustomVolumeRequest)
    async def custom_snapshot_list(self, req: CustomVolumeRequest) -> Reply:
        rec = await self.custom.record(req.pool, req.project, req.name)
        snaps = await self.custom.snapshot_list(rec)
        if req.recursion <= 0:
            return Reply(metadata=[snapshot_url(req.pool, req.name, s, req.project)
                                   for s in snaps])
        return Reply(metadata=[self.custom.snapshot_public(rec, s) for s in snaps])

    @endpoint("custom_snapshot_get", CustomVolumeRequest)
    async def custom_snapshot_get(self, req: CustomVolumeRequest) -> Reply:
        obj, tag = await self.custom.snapshot_get(req.pool, req.project, req.name,
                                                  req.snapshot)
        return Reply(metadata=obj, etag=tag)

    @endpoint("custom_snapshot_create", CustomVolumeRequest)
    async def custom_snapshot_create(self, req: CustomVolumeRequest) -> Reply:
        body = parse_body(SnapshotsPost, req.body)
        rec = await self.custom.record(req.pool, req.project, req.name)
        await self.custom.check_snapshot_allowed(req.project)
        taken = set(await self.custom.snapshot_list(rec))
        snap = body.name or next_snapshot_name(rec.get("config", {}).get(
            "snapshots.pattern", ""), taken)
        validate_name("snapshot", snap)
        if snap in taken:
            raise Conflict(f"Snapshot {snap!r} already in use")
        expires = snapshot_expiry(body.expires_at, rec.get("config", {}))
        url = snapshot_url(req.pool, req.name, snap, req.project)

        async def run(_op: Any) -> None:
            await self.custom.snapshot_create(req.pool, req.project, req.name, snap, expires)
            await self._custom_event("storage-volume-snapshot-created", url, req)

        return await self._custom_operation("Creating storage volume snapshot", req, run, {
            "storage_volumes": [volume_url(req.pool, KIND, req.name, req.project)],
            "storage_volume_snapshots": [url]})

    @endpoint("custom_snapshot_delete", CustomVolumeRequest)
    async def custom_snapshot_delete(self, req: CustomVolumeRequest) -> Reply:
        await self.custom.snapshot_get(req.pool, req.project, req.name, req.snapshot)
        url = snapshot_url(req.pool, req.name, req.snapshot, req.project)

        async def run(_op: Any) -> None:
            await self.custom.snapshot_delete(req.pool, req.project, req.name, req.snapshot)
            await self._custom_event("storage-volume-snapshot-deleted", url, req)

        return await self._custom_operation("Deleting storage volume snapshot", req, run,
                                            {"storage_volume_snapshots": [url]})

    @endpoint("custom_snapshot_rename", CustomVolumeRequest)
    async def custom_snapshot_rename(self, req: CustomVolumeRequest) -> Reply:
        body = parse_body(StorageVolumePost, req.body)
        if not body.name:
            raise BadRequest("No name provided")
        validate_name("snapshot", body.name)
        await self.custom.snapshot_get(req.pool, req.project, req.name, req.snapshot)
        url = snapshot_url(req.pool, req.name, body.name, req.project)

        async def run(_op: Any) -> None:
            await self.custom.snapshot_rename(req.pool, req.project, req.name, req.snapshot,
                                              body.name or "")
            await self._custom_event("storage-volume-snapshot-renamed", url, req,
                                     {"old_name": req.snapshot})

        return await self._custom_operation("Renaming storage volume snapshot", req, run, {
            "storage_volume_snapshots": [snapshot_url(req.pool, req.name, req.snapshot,
                                                      req.project)]})

    async def _custom_snapshot_update(self, req: CustomVolumeRequest, patch: bool) -> Reply:
        body = parse_body(SnapshotPut, req.body)
        await self.custom.snapshot_update(req.pool, req.project, req.name, req.snapshot,
                                          body.model_dump(exclude_unset=True), req.etag,
                                          patch)
        await self._custom_event("storage-volume-snapshot-updated",
                                 snapshot_url(req.pool, req.name, req.snapshot, req.project), req)
        return Reply(metadata=None)

    @endpoint("custom_snapshot_update", CustomVolumeRequest)
    async def custom_snapshot_update(self, req: CustomVolumeRequest) -> Reply:
        return await self._custom_snapshot_update(req, patch=False)

    @endpoint("custom_snapshot_patch", CustomVolumeRequest)
    async def custom_snapshot_patch(self, req: CustomVolumeRequest) -> Reply:
        return await self._custom_snapshot_update(req, patch=True)

    # -- backups (lxc storage volume export / import) ---------------------------------------

    def _backup_url(self, req: CustomVolumeRequest, backup: str) -> str:
        base = volume_url(req.pool, KIND, req.name, "default")
        out = f"{base}/backups/{backup}"
        return out if req.project == "default" else f"{out}?project={req.project}"

    @endpoint("custom_backup_list", CustomVolumeRequest)
    async def custom_backup_list(self, req: CustomVolumeRequest) -> Reply:
        items = await self.custom_backups.listing(req.pool, req.project, req.name)
        if req.recursion <= 0:
            return Reply(metadata=[self._backup_url(req, b) for b, _m in items])
        return Reply(metadata=[backup_public(b, m) for b, m in items])

    @endpoint("custom_backup_get", CustomVolumeRequest)
    async def custom_backup_get(self, req: CustomVolumeRequest) -> Reply:
        meta = await self.custom_backups.get(req.pool, req.project, req.name, req.backup)
        return Reply(metadata=backup_public(req.backup, meta))

    @endpoint("custom_backup_create", CustomVolumeRequest)
    async def custom_backup_create(self, req: CustomVolumeRequest) -> Reply:
        body = parse_body(BackupsPost, req.body)
        backup, meta = await self.custom_backups.prepare(req.pool, req.project, req.name,
                                                         body)

        async def run(_op: Any) -> None:
            await self.custom_backups.create(req.pool, req.project, req.name, backup, meta)
            await self._custom_event("storage-volume-backup-created",
                                     self._backup_url(req, backup), req)

        return await self._custom_operation("Backing up storage volume", req, run, {
            "storage_volumes": [volume_url(req.pool, KIND, req.name, req.project)],
            "backups": [backup]})

    @endpoint("custom_backup_rename", CustomVolumeRequest)
    async def custom_backup_rename(self, req: CustomVolumeRequest) -> Reply:
        body = parse_body(StorageVolumePost, req.body)
        if not body.name:
            raise BadRequest("No name provided")
        await self.custom_backups.get(req.pool, req.project, req.name, req.backup)

        async def run(_op: Any) -> None:
            await self.custom_backups.rename(req.pool, req.project, req.name, req.backup,
                                             body.name or "")
            await self._custom_event("storage-volume-backup-renamed",
                                     self._backup_url(req, body.name or ""), req,
                                     {"old_name": req.backup})

        return await self._custom_operation("Renaming storage volume backup", req, run,
                                            {"backups": [req.backup]})

    @endpoint("custom_backup_delete", CustomVolumeRequest)
    async def custom_backup_delete(self, req: CustomVolumeRequest) -> Reply:
        await self.custom_backups.get(req.pool, req.project, req.name, req.backup)

        async def run(_op: Any) -> None:
            await self.custom_backups.delete(req.pool, req.project, req.name, req.backup)
            await self._custom_event("storage-volume-backup-deleted",
                                     self._backup_url(req, req.backup), req)

        return await self._custom_operation("Deleting storage volume backup", req, run,
                                            {"backups": [req.backup]})

    @endpoint("custom_backup_export", CustomVolumeRequest)
    async def custom_backup_export(self, req: CustomVolumeRequest) -> Reply:
        """Start the tarball on stream ``req.stream`` (the gateway listens already)."""
        if not req.stream:
            raise BadRequest("No stream to send the backup on")
        filename = await self.custom_backups.export(req.pool, req.project, req.name,
                                                    req.backup, req.stream)
        await self._custom_event("storage-volume-backup-retrieved",
                                 self._backup_url(req, req.backup), req)
        return Reply(metadata={"filename": filename})

    @endpoint("custom_import", CustomVolumeRequest)
    async def custom_import(self, req: CustomVolumeRequest) -> Reply:
        """``lxc storage volume import``: the staged upload ``req.object`` (an operation;
        its index is checked before it starts)."""
        info = await self.custom_backups.read_index(req.object)
        name = req.name or info["name"]
        validate_name("volume", name)
        await self.pools.get(req.pool)  # type: ignore[attr-defined]
        url = volume_url(req.pool, KIND, name, req.project)

        async def run(_op: Any) -> None:
            await self.custom_backups.import_(req.pool, req.project, req.object, name, info)
            await self._custom_event("storage-volume-created", url, req)

        return await self._custom_operation("Importing storage volume", req, run,
                                            {"storage_volumes": [url]})
