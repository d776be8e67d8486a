"""Copies, moves to another pool and publishing: ``POST /1.0/instances`` with
``source.type`` ``copy``, ``lxc move --storage``, and the instance side of ``lxc publish``.

A mixin of :class:`services.instance.service.InstanceService`: the service's
``create_instance`` hands a ``copy`` source here, its ``rename_instance`` a pool move.
"""

from __future__ import annotations

from typing import Any

from shared.api import url
from shared.models import CreateRequest, ObjectRequest, Reply
from shared.state import key

from . import copy, lifecycle
from .records import instance_url

# container_only_migration: --instance-only; container_incremental_copy: --refresh;
# instance_pool_move: `lxc move --storage` as one server-side request.
API_EXTENSIONS: list[str] = ["container_only_migration", "container_incremental_copy",
                             "instance_pool_move", "container_copy_project"]


class CopyPublishMixin:
    """Copy, move and publish. Uses the service's ctx, lock, events and _start_work."""

    ctx: Any
    instances: Any
    events: Any

    async def copy_instance(self, req: CreateRequest) -> Reply:
        """``POST /1.0/instances`` with ``source.type: copy`` (``lxc copy``)."""
        self._admit()  # type: ignore[attr-defined]
        rec, plan = await copy.prepare(self.ctx, req.body, req.project)
        start = bool(req.body.get("start")) and not plan.refresh
        event = "instance-updated" if plan.refresh else "instance-created"

        async def run(_op: Any) -> None:
            async with self.lock(rec["project"], rec["name"]):  # type: ignore[attr-defined]
                made = await copy.build(self.ctx, rec, plan)
                await self.events.lifecycle(
                    event, instance_url(made), project=made["project"],
                    context={"storage-pool": made["pool"], "type": made["type"]},
                    requestor=req.requestor)
                if start:
                    await lifecycle.start(self.ctx, made)
                    await self.events.lifecycle("instance-started", instance_url(made),
                                                project=made["project"],
                                                requestor=req.requestor)

        urls = [url("instances", rec["name"], rec["project"])]
        resources = {"instances": urls}
        if rec["type"] == "container":
            resources["containers"] = [url("containers", rec["name"], rec["project"])]
        try:
            op = await self._start_work(  # type: ignore[attr-defined]
                "Creating instance", run, project=req.project, resources=resources)
        except BaseException:  # no operation will build or undo: free the reserved name
            if not plan.refresh:
                await self.instances.delete(key(rec["project"], rec["name"]))
            raise
        return Reply(type="async", operation=op.lxd())

    async def move_to_pool(self, req: ObjectRequest) -> Reply:  # filled in below
        raise NotImplementedError
