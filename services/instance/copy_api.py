"""Copies, moves to another pool and publishing: ``POST /1.0/instances`` with
``source.type`` ``copy``, ``lxc move --storage``, and the instance side of ``lxc publish``.

A mixin of :class:`services.instance.service.InstanceService`: the service's
``create_instance`` hands a ``copy`` source here, its ``rename_instance`` a pool move.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from shared.api import url
from shared.bus import Bus
from shared.events import Events
from shared.messages.publish import PublishRequest
from shared.models import CreateRequest, ObjectRequest, Reply
from shared.service import endpoint
from shared.state import Store, key

from . import copy, lifecycle, move, publish
from .context import Context
from .records import instance_url

# container_only_migration: --instance-only; container_incremental_copy: --refresh;
# instance_pool_move: `lxc move --storage` as one server-side request.
API_EXTENSIONS: list[str] = ["container_only_migration", "container_incremental_copy",
                             "instance_pool_move", "container_copy_project"]


class CopyPublishMixin:
    """Copy, move and publish. Uses the service's ctx, lock, events and _start_work."""

    # What the service provides (see InstanceService).
    ctx: Context
    instances: Store
    events: Events
    bus: Bus
    config: Any
    lock: Callable[[str, str], asyncio.Lock]
    _admit: Callable[[], None]
    _start_work: Callable[..., Awaitable[Any]]
    require_instance: Callable[[str, str], Awaitable[dict[str, Any]]]

    async def copy_instance(self, req: CreateRequest) -> Reply:
        """``POST /1.0/instances`` with ``source.type: copy`` (``lxc copy``)."""
        self._admit()
        rec, plan = await copy.prepare(self.ctx, req.body, req.project)
        start = bool(req.body.get("start")) and not plan.refresh
        event = "instance-updated" if plan.refresh else "instance-created"

        async def run(_op: Any) -> None:
            async with self.lock(rec["project"], rec["name"]):
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
            op = await self._start_work(
                "Creating instance", run, project=req.project, resources=resources)
        except BaseException:  # no operation will build or undo: free the reserved name
            if not plan.refresh:
                await self.instances.delete(key(rec["project"], rec["name"]))
            raise
        return Reply(type="async", operation=op.lxd())

    @endpoint("publish", PublishRequest, scope="node")
    async def publish_instance(self, req: PublishRequest) -> Reply:
        """The instance side of ``lxc publish``: pack it into ``transfers`` (asked by the
        image service; held under the instance's lock so it cannot start meanwhile)."""
        async with self.lock(req.project, req.name):
            packed = await publish.pack(self.ctx, self.bus,
                                        self.config.dir / "tmp", req)
        return Reply(metadata=packed.model_dump())

    async def move_to_pool(self, req: ObjectRequest) -> Reply:
        """``POST /1.0/instances/<n>`` with ``migration`` and ``pool`` (``lxc move
        --storage``), as an operation."""
        rec = await self.require_instance(req.project, req.name)
        body = req.body or {}
        new_name, pool, only, restart = await move.check(self.ctx, rec, body)

        async def run(_op: Any) -> None:
            async with self.lock(req.project, req.name):
                current = await self.require_instance(
                    req.project, req.name)
                try:
                    moved = await move.move(self.ctx, current, new_name, pool, only, restart)
                except BaseException:
                    if restart:  # it ran before: leave it running where it was
                        await _start_quietly(self.ctx, req.project, req.name)
                    raise
            if moved["name"] != req.name:
                await self.events.lifecycle(
                    "instance-renamed", instance_url(moved), project=req.project,
                    context={"old_name": req.name}, requestor=req.requestor)
            await self.events.lifecycle(
                "instance-updated", instance_url(moved), project=req.project,
                context={"storage-pool": pool}, requestor=req.requestor)

        op = await self._start_work(
            "Migrating instance", run, project=req.project,
            resources={"instances": [url("instances", req.name, req.project)]})
        return Reply(type="async", operation=op.lxd())


async def _start_quietly(ctx: Any, project: str, name: str) -> None:
    found = await ctx.instances.get(key(project, name))
    if found is None or found[0].get("status") != "Stopped":
        return
    try:
        await lifecycle.start(ctx, found[0])
    except Exception as exc:  # the move's own error is the one the caller must see
        ctx.log.warning("could not start the instance again after a failed move",
                        instance=name, error=str(exc))
