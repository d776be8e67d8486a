"""``/1.0/instances/<name>/backups``: backups in LXD's format, export and import.

A mixin of :class:`services.instance.service.InstanceService`. The logic is in
``backups`` (records, freezing), ``backup_export`` (the streamed tarball) and
``backup_import`` (``lxc import``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared import blobs
from shared.errors import BadRequest, NotFound
from shared.messages.backup import BackupExportRequest, BackupImportRequest, BackupRequest
from shared.models import ObjectRequest, Reply
from shared.service import endpoint
from shared.state import Store

from . import backup_export, backup_import, backups
from .names import host_of
from .records import instance_url

# container_backup itself is in the service's own list (``lxc info`` needs it).
API_EXTENSIONS: list[str] = ["backup_compression", "backup_compression_algorithm",
                             "container_backup_override_pool", "backup_override_name"]
SWEEP_EVERY = 30.0


class BackupsMixin:
    """Instance backups: list, create (an operation), get, rename, delete, export, import."""

    ctx: Any
    bus: Any
    events: Any
    operations: Any
    _backups: Store | None = None
    _backup_sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """After the service's own setup: open the bucket, drop what a crash left
        (records still ``creating``), then sweep expired and orphaned backups."""
        await super().start()  # type: ignore[misc]
        store = await self._backup_store()
        await backups.sweep(self.ctx, store)
        self._backup_sweeper = asyncio.create_task(self._sweep_forever(store))

    async def stop(self) -> None:
        if self._backup_sweeper is not None:
            self._backup_sweeper.cancel()
        await super().stop()  # type: ignore[misc]

    async def _sweep_forever(self, store: Store) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await backups.sweep(self.ctx, store)
            except Exception as exc:  # the bus away for a moment: next round
                self.ctx.log.warning("backup sweep failed", error=str(exc))

    async def _backup_store(self) -> Store:
        if self._backups is None:
            self._backups = await Store(self.bus, "backups", cache=True).open()
        return self._backups

    async def _backup(self, project: str, instance: str, name: str
                      ) -> tuple[dict[str, Any], dict[str, Any], Store]:
        inst = await self.require_instance(project, instance)  # type: ignore[attr-defined]
        store = await self._backup_store()
        await backups.adopt(self.ctx, store, inst)
        found = await store.get(backups.backup_key(project, instance, name))
        if found is None or found[0].get("creating") or backups.expired(found[0]) or \
                backups.stale(found[0], inst):
            raise NotFound("Instance backup not found")
        return inst, found[0], store

    def _backup_resources(self, inst: dict[str, Any], backup: str | None = None
                          ) -> dict[str, list[str]]:
        res = {"instances": [instance_url(inst)]}
        if inst["type"] == "container":
            res["containers"] = [instance_url(inst).replace("/instances/", "/containers/")]
        if backup is not None:
            res["backups"] = [f"/1.0/backups/{backup}"]
        return res

    @endpoint("backup_list", ObjectRequest)
    async def list_backups(self, req: ObjectRequest) -> Reply:
        store = await self._backup_store()
        recs = []
        inst = await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        await backups.adopt(self.ctx, store, inst)
        for r in backups.records(store, req.project, req.name):
            if backups.expired(r) or backups.stale(r, inst):  # now, not at the next sweep
                await backups.drop(self.ctx, store, r)
            elif not r.get("creating"):
                recs.append(r)
        if (req.body or {}).get("recursion", 0):
            return Reply(metadata=[backups.public(r) for r in recs])
        return Reply(metadata=[backups.backup_url(r) for r in recs])

    @endpoint("backup_get", BackupRequest)
    async def get_backup(self, req: BackupRequest) -> Reply:
        _inst, rec, _store = await self._backup(req.project, req.name, req.backup)
        return Reply(metadata=backups.public(rec))

    @endpoint("backup_create", BackupRequest)
    async def create_backup(self, req: BackupRequest) -> Reply:
        inst = await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        store = await self._backup_store()
        for old in backups.records(store, req.project, req.name):
            if backups.stale(old, inst):  # an earlier instance's: its name is free
                await backups.drop(self.ctx, store, old)
        rec = backups.prepare(store, inst, req.body or {})

        async def run(_op: Any) -> None:
            async with self.lock(req.project, req.name):  # type: ignore[attr-defined]
                current = await self.require_instance(  # type: ignore[attr-defined]
                    req.project, req.name)
                made = await backups.create(self.ctx, store, current, rec)
            await self.events.lifecycle("instance-backup-created", backups.backup_url(made),
                                        project=req.project, requestor=req.requestor)

        op = await self.operations.start("Backing up instance", run, project=req.project,
                                         resources=self._backup_resources(inst, rec["name"]))
        return Reply(type="async", operation=op.lxd())

    @endpoint("backup_rename", BackupRequest)
    async def rename_backup(self, req: BackupRequest) -> Reply:
        inst, rec, store = await self._backup(req.project, req.name, req.backup)
        new = (req.body or {}).get("name")
        backups.check_name(new)

        async def run(_op: Any) -> None:
            moved = await backups.rename(self.ctx, store, rec, new)
            await self.events.lifecycle("instance-backup-renamed", backups.backup_url(moved),
                                        project=req.project, requestor=req.requestor,
                                        context={"old_name": rec["name"]})

        op = await self.operations.start("Renaming instance backup", run, project=req.project,
                                         resources=self._backup_resources(inst))
        return Reply(type="async", operation=op.lxd())

    @endpoint("backup_delete", BackupRequest)
    async def delete_backup(self, req: BackupRequest) -> Reply:
        inst, rec, store = await self._backup(req.project, req.name, req.backup)

        async def run(_op: Any) -> None:
            await backups.drop(self.ctx, store, rec)
            if await store.get(backups.backup_key(req.project, req.name, req.backup)):
                raise BadRequest("The backup's frozen copies could not be removed; it is "
                                 "removed later")
            await self.events.lifecycle("instance-backup-deleted", backups.backup_url(rec),
                                        project=req.project, requestor=req.requestor)

        op = await self.operations.start("Deleting instance backup", run, project=req.project,
                                         resources=self._backup_resources(inst))
        return Reply(type="async", operation=op.lxd())

    @endpoint("backup_export", BackupExportRequest)
    async def export_backup(self, req: BackupExportRequest) -> Reply:
        inst, rec, _store = await self._backup(req.project, req.name, req.backup)
        vol = await backup_export.prepare(self.ctx, rec)
        drv = self.driver_of(inst)  # type: ignore[attr-defined]
        idmap = None
        owner = getattr(drv, "root_owner", None)
        if owner is not None and inst["type"] == "container":
            host = host_of(inst)
            uid, _gid = await asyncio.to_thread(owner, host)
            if uid:  # a shifted tree: its ids go back to the container's
                idmap = await asyncio.to_thread(drv.idmap, host)
        await backup_export.start(self.ctx, self.bus, req.stream, rec.get("instance_record")
                                  or inst, rec, vol, idmap)
        await self.events.lifecycle("instance-backup-retrieved", backups.backup_url(rec),
                                    project=req.project, requestor=req.requestor)
        return Reply(metadata={"filename": backup_export.filename(rec)})

    @endpoint("backup_import", BackupImportRequest)
    async def import_backup(self, req: BackupImportRequest) -> Reply:
        self._admit()  # type: ignore[attr-defined]
        transfers = await blobs.transfers(self.bus)
        try:
            rec, info = await backup_import.prepare(self.ctx, req, transfers)
        except BaseException:
            await backup_import.discard(transfers, req.object)
            raise

        async def run(_op: Any) -> None:
            try:
                async with self.lock(rec["project"], rec["name"]):  # type: ignore[attr-defined]
                    made = await backup_import.build(self.ctx, rec, info, req)
            finally:
                await backup_import.discard(transfers, req.object)
            await self.events.lifecycle(
                "instance-created", instance_url(made), project=made["project"],
                context={"storage-pool": made["pool"], "type": made["type"]},
                requestor=req.requestor)

        try:
            op = await self._start_work(  # type: ignore[attr-defined]
                "Restoring backup", run, project=req.project,
                resources=self._backup_resources(rec))
        except BaseException:
            await self.instances.delete(  # type: ignore[attr-defined]
                backups.key(rec["project"], rec["name"]))
            await backup_import.discard(transfers, req.object)
            raise
        return Reply(type="async", operation=op.lxd())
