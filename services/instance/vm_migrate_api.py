"""Bus verbs of a VM's live migration between cluster members (logic: vm_migrate.py).

Each is asked of one member by the gateway (services/gateway/vm_live_move.py), with
``node=``. The request names the instance in ``instance``, not ``name``: a verb with a
``name`` is forwarded by the service to the member the instance is located on
(``Service.node_of``), and ``prepare``/``finish``/``abort`` must run on the target.
"""

from __future__ import annotations

from typing import Any

from shared.errors import NotFound
from shared.messages.instance import VmMigrateRequest
from shared.models import Reply
from shared.service import endpoint
from shared.state import key

from . import vm_migrate


class VmMigrateMixin:
    """Mixed into InstanceService: ``self.ctx``, ``self.instances``, ``self.lock``."""

    ctx: Any
    instances: Any
    lock: Any

    async def _migrating(self, req: VmMigrateRequest) -> dict[str, Any]:
        found = await self.instances.get(key(req.project, req.instance))
        if found is None or found[0].get("status") == "Creating":
            raise NotFound(f"Instance {req.instance!r} not found")
        return found[0]

    @endpoint("vm_migrate_prepare", VmMigrateRequest)
    async def vm_migrate_prepare(self, req: VmMigrateRequest) -> Reply:
        """On the target: volume (temporary name) and spec directory made."""
        rec = await self._migrating(req)
        return Reply(metadata=await vm_migrate.prepare(self.ctx, rec))

    @endpoint("vm_migrate_send", VmMigrateRequest)
    async def vm_migrate_send(self, req: VmMigrateRequest) -> Reply:
        """On the source: the running domain goes to the target; libvirt's job stats."""
        rec = await self._migrating(req)
        async with self.lock(req.project, req.instance):
            return Reply(metadata=await vm_migrate.send(self.ctx, rec, req.target))

    @endpoint("vm_migrate_cleanup", VmMigrateRequest)
    async def vm_migrate_cleanup(self, req: VmMigrateRequest) -> Reply:
        """On the source, once the target runs it: domain, spec and volume removed."""
        rec = await self._migrating(req)
        await vm_migrate.cleanup(self.ctx, rec)
        return Reply(metadata=None)

    @endpoint("vm_migrate_finish", VmMigrateRequest)
    async def vm_migrate_finish(self, req: VmMigrateRequest) -> Reply:
        """On the target: the volume renamed, the spec final, the record located here."""
        rec = await self._migrating(req)
        return Reply(metadata=await vm_migrate.finish(self.ctx, rec, req.target, req.spec))

    @endpoint("vm_migrate_abort", VmMigrateRequest)
    async def vm_migrate_abort(self, req: VmMigrateRequest) -> Reply:
        """On the target after a failure: what prepare made (and any domain) removed."""
        rec = await self._migrating(req)
        await vm_migrate.abort(self.ctx, rec)
        return Reply(metadata=None)
