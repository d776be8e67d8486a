"""``/1.0/instances/<name>/snapshots``: snapshot CRUD, rename, restore, schedules and expiry.

A mixin of :class:`services.instance.service.InstanceService`. Snapshot endpoints name a
snapshot as LXD does internally, ``<instance>/<snapshot>`` in the request's ``name``
(instance names cannot hold a ``/``). Writes run as LXD operations under the instance's
lock (one change at a time per instance: a snapshot never races a restore, a delete or a
rename of its instance), with LXD's lifecycle events.

The background task (:meth:`snapshot_tasks`) takes the scheduled snapshots and removes the
expired ones every ``CORRAL_SNAPSHOT_INTERVAL`` seconds; its first pass runs at start, so
what expired while the service was down goes at once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from shared import restrictions
from shared.api import check_etag, url
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.models import ObjectRequest, Reply, Requestor
from shared.service import endpoint

from . import (
    lifecycle,
    move,
    restore,
    snapshot_ops,
    snapshot_schedule,
    snapshot_usage,
    snapshots,
)
from .records import instance_url, record_etag

API_EXTENSIONS: list[str] = ["snapshot_scheduling", "snapshot_schedule_aliases",
                             "snapshot_expiry", "snapshot_expiry_creation"]
RUNNING = ("Running", "Frozen")


def _split(full: str) -> tuple[str, str]:
    instance, sep, snap = full.partition("/")
    if not sep or not snap:
        raise BadRequest(f"Invalid snapshot {full!r}: expected <instance>/<snapshot>")
    return instance, snap


class InstanceSnapshotsMixin:
    """Instance snapshots. Uses the service's ctx, lock, events, operations, _start_work."""

    ctx: Any
    events: Any
    operations: Any

    # -- helpers ---------------------------------------------------------------------------

    def _snap_resources(self, rec: dict[str, Any], snap: str | None) -> dict[str, list[str]]:
        """LXD's operation resources of a snapshot change."""
        res = {"instances": [instance_url(rec)]}
        if snap is not None:
            res["instances_snapshots"] = [snapshots.snapshot_url(rec["project"], rec["name"],
                                                                 snap)]
        if rec.get("type", "container") == "container":
            res["containers"] = [url("containers", rec["name"], rec["project"])]
        return res

    async def _snapshot_of(self, project: str, full: str
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(instance record, snapshot record) of ``<instance>/<snapshot>``; 404s."""
        instance, snap = _split(full)
        rec = await self.require_instance(project, instance)  # type: ignore[attr-defined]
        found = snapshots.find(self.ctx.snapshots, project, instance, snap)
        if found is None:
            raise NotFound("Snapshot not found")
        return rec, found

    async def _snap_event(self, action: str, snap: dict[str, Any],
                          requestor: Requestor | None, context: dict[str, Any] | None = None
                          ) -> None:
        await self.events.lifecycle(
            action, snapshots.snapshot_url(snap["project"], snap["instance"], snap["name"]),
            project=snap["project"], context=context, requestor=requestor)

    async def _snap_op(self, description: str, rec: dict[str, Any], snap: str | None,
                       run: Any) -> Reply:
        op = await self._start_work(  # type: ignore[attr-defined]
            description, run, project=rec["project"],
            resources=self._snap_resources(rec, snap))
        return Reply(type="async", operation=op.lxd())

    # -- list and get ----------------------------------------------------------------------

    @endpoint("snapshot_list", ObjectRequest)
    async def list_snapshots(self, req: ObjectRequest) -> Reply:
        """Snapshot URLs, or (recursion) LXD's snapshot objects, oldest first."""
        rec = await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        recs = snapshots.records(self.ctx.snapshots, req.project, req.name)
        if (req.body or {}).get("recursion", 0) >= 1:
            sizes = await self._sizes(rec, recs)
            return Reply(metadata=[snapshots.public(r, n) for r, n in zip(recs, sizes,
                                                                           strict=True)])
        return Reply(metadata=[snapshots.snapshot_url(req.project, req.name, r["name"])
                               for r in recs])

    async def snapshots_of(self, recs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """LXD's snapshot objects of each instance of ``recs``, with their sizes (for
        ``GET`` with recursion and lists, as LXD's RenderFull): one storage request for
        all of them."""
        per = [snapshots.records(self.ctx.snapshots, r["project"], r["name"]) for r in recs]
        pairs = [(r, s) for r, snaps in zip(recs, per, strict=True) for s in snaps]
        sizes = iter(await snapshot_usage.sizes_many(self.ctx.remote.bus,
                                                     self.ctx.remote.node, pairs))
        return [[snapshots.public(s, next(sizes)) for s in snaps] for snaps in per]

    @endpoint("snapshot_get", ObjectRequest)
    async def get_snapshot(self, req: ObjectRequest) -> Reply:
        rec, snap = await self._snapshot_of(req.project, req.name)
        size, = await self._sizes(rec, [snap])
        return Reply(metadata=snapshots.public(snap, size), etag=snapshot_ops.etag(snap))

    async def _sizes(self, rec: dict[str, Any], snaps: list[dict[str, Any]]) -> list[int]:
        """The snapshots' ``size`` as their pool tells it (-1 where it cannot)."""
        return await snapshot_usage.sizes(self.ctx.remote.bus, self.ctx.remote.node, rec,
                                          snaps)

    # -- create ----------------------------------------------------------------------------

    @endpoint("snapshot_create", ObjectRequest)
    async def create_snapshot(self, req: ObjectRequest) -> Reply:
        """``POST /1.0/instances/<n>/snapshots``: checked at once, made as an operation."""
        rec = await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        if rec.get("status") == "Deleting":
            raise NotFound("Instance not found")
        name, expires, stateful = snapshot_ops.plan_create(self.ctx, rec, req.body or {})
        if stateful:
            running = await self.instance_status(rec) in RUNNING  # type: ignore[attr-defined]
            capable = self.driver_of(rec).capabilities.stateful  # type: ignore[attr-defined]
            snapshot_ops.check_stateful(rec, running, capable)

        async def run(_op: Any) -> None:
            await self._take(req.project, req.name, name, expires, stateful, req.requestor)

        return await self._snap_op("Snapshotting instance", rec, name, run)

    async def _take(self, project: str, instance: str, name: str, expires: str,
                    stateful: bool, requestor: Requestor | None) -> dict[str, Any]:
        async with self.lock(project, instance):  # type: ignore[attr-defined]
            current = await self.require_instance(project, instance)  # type: ignore
            made = await snapshot_ops.create(self.ctx, current, name, expires, stateful)
        await self._snap_event("instance-snapshot-created", made, requestor)
        return made

    # -- update, rename, delete ----------------------------------------------------------

    async def _snapshot_update(self, req: ObjectRequest, patch: bool) -> Reply:
        rec, snap = await self._snapshot_of(req.project, req.name)
        if req.etag and req.etag.strip('"') != snapshot_ops.etag(snap):
            raise CorralError("ETag doesn't match", 412)
        async with self.lock(req.project, rec["name"]):  # type: ignore[attr-defined]
            new = await snapshot_ops.update(self.ctx, snap, req.body or {}, patch)
        await self._snap_event("instance-snapshot-updated", new, req.requestor)

        async def run(_op: Any) -> None:
            return None

        return await self._snap_op("Updating snapshot", rec, snap["name"], run)

    @endpoint("snapshot_update", ObjectRequest)
    async def update_snapshot(self, req: ObjectRequest) -> Reply:
        return await self._snapshot_update(req, patch=False)

    @endpoint("snapshot_patch", ObjectRequest)
    async def patch_snapshot(self, req: ObjectRequest) -> Reply:
        return await self._snapshot_update(req, patch=True)

    @endpoint("snapshot_rename", ObjectRequest)
    async def rename_snapshot(self, req: ObjectRequest) -> Reply:
        """``POST /1.0/instances/<n>/snapshots/<s>``: ``{"name": ...}``; ``migration``
        (a copy elsewhere) is the copy work's."""
        rec, snap = await self._snapshot_of(req.project, req.name)
        body = req.body or {}
        if body.get("migration"):
            raise BadRequest("Snapshot migration is not supported here: copy the snapshot "
                             "with 'lxc copy c1/snap0 c2'")
        new_name = snapshots.check_name(body.get("name"))
        if new_name in [r["name"] for r in snapshots.all_records(
                self.ctx.snapshots, req.project, rec["name"])]:
            raise Conflict(f"Name '{rec['name']}/{new_name}' already in use")

        async def run(_op: Any) -> None:
            async with self.lock(req.project, rec["name"]):  # type: ignore[attr-defined]
                _r, current = await self._snapshot_of(req.project, req.name)
                new = await snapshot_ops.rename(self.ctx, current, new_name)
            await self._snap_event("instance-snapshot-renamed", new, req.requestor,
                                   {"old_name": snap["name"]})

        return await self._snap_op("Renaming snapshot", rec, snap["name"], run)

    @endpoint("snapshot_delete", ObjectRequest)
    async def delete_snapshot(self, req: ObjectRequest) -> Reply:
        rec, snap = await self._snapshot_of(req.project, req.name)

        async def run(_op: Any) -> None:
            await self._remove(req.project, rec["name"], snap["name"], req.requestor)

        return await self._snap_op("Deleting snapshot", rec, snap["name"], run)

    async def _remove(self, project: str, instance: str, name: str,
                      requestor: Requestor | None) -> bool:
        async with self.lock(project, instance):  # type: ignore[attr-defined]
            current = snapshots.find(self.ctx.snapshots, project, instance, name)
            if current is None:
                return False
            await snapshot_ops.delete(self.ctx, current)
        await self._snap_event("instance-snapshot-deleted", current, requestor)
        return True

    # -- restore ---------------------------------------------------------------------------

    @endpoint("snapshot_restore", ObjectRequest)
    async def restore_snapshot(self, req: ObjectRequest) -> Reply:
        """``PUT /1.0/instances/<n>`` with ``restore`` (the gateway sends it here): checked
        at once (404, 400, 412), restored as an operation."""
        rec = await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        check_etag(req.etag, record_etag(rec))
        body = req.body or {}
        snap = await restore.check(self.ctx, rec, body)
        stateful = bool(body.get("stateful"))  # check() refused it for a stateless one
        await restore.plan(self.ctx, rec, snap)  # refusals before the operation

        async def run(_op: Any) -> None:
            async with self.lock(req.project, req.name):  # type: ignore[attr-defined]
                current = await self.require_instance(  # type: ignore[attr-defined]
                    req.project, req.name)
                fresh = snapshots.find(self.ctx.snapshots, req.project, req.name,
                                       snap["name"])
                if fresh is None:
                    raise NotFound(f"Snapshot {req.name}/{snap['name']} does not exist")
                await restore.run(self.ctx, current, fresh, stateful)
            await self.events.lifecycle(
                "instance-restored", instance_url(rec), project=req.project,
                context={"snapshot": f"{req.name}/{snap['name']}"},
                requestor=req.requestor)

        op = await self._start_work(  # type: ignore[attr-defined]
            "Restoring snapshot", run, project=req.project,
            resources=self._snap_resources(rec, snap["name"]))
        return Reply(type="async", operation=op.lxd())

    # -- schedules and expiry ----------------------------------------------------------------

    async def snapshot_setup(self) -> list[asyncio.Task[Any]]:
        """At start (after the reconcile): finish interrupted restores and moves, then run the
        schedule/expiry task. Returns the tasks (cancelled at teardown)."""
        tasks: list[asyncio.Task[Any]] = restore.reconcile(
            self.ctx, self.lock)  # type: ignore[attr-defined]
        # and the moves to another pool (reconcile.py leaves their records to this)
        tasks.append(move.resume_all(self.ctx, self.lock))  # type: ignore[attr-defined]
        tasks.append(asyncio.create_task(self.snapshot_tasks()))
        return tasks

    async def snapshot_tasks(self) -> None:
        """Every :func:`snapshot_schedule.interval` seconds: scheduled snapshots, then
        expired ones removed. The first pass runs now."""
        every = snapshot_schedule.interval()
        last = datetime.now(timezone.utc) - timedelta(seconds=every)
        while True:
            now = datetime.now(timezone.utc)
            try:
                await self.snapshot_pass(last, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass tries again
                self.ctx.log.warning("snapshot schedule/expiry pass failed", error=str(exc))
            # the sign a pass ended (tests wait for it rather than for a guessed time)
            self.ctx.log.debug("snapshot pass done")
            last = now
            await asyncio.sleep(every)

    async def snapshot_pass(self, last: datetime, now: datetime) -> None:
        for rec in self.ctx.local():
            if rec.get("status") in ("Creating", "Deleting") or rec.get("restoring"):
                continue
            sched = (rec.get("expanded_config") or {}).get("snapshots.schedule", "")
            if sched and self._project_takes_snapshots(rec["project"]):
                try:
                    await self._scheduled(rec, sched, last, now)
                except CorralError as exc:
                    self.ctx.log.warning("scheduled snapshot failed", instance=rec["name"],
                                         project=rec["project"], error=exc.message)
        for snap in list(self.ctx.snapshots.cached()):
            if snapshots.whole(snap) and snapshots.expired(snap, now):
                try:
                    if await self._remove(snap["project"], snap["instance"], snap["name"],
                                          None):
                        self.ctx.log.info("expired snapshot removed",
                                          instance=snap["instance"], snapshot=snap["name"])
                except CorralError as exc:
                    self.ctx.log.warning("expired snapshot not removed",
                                         instance=snap["instance"], snapshot=snap["name"],
                                         error=exc.message)

    def _project_takes_snapshots(self, project: str) -> bool:
        """As LXD's schedule task: instances of projects whose restricted.snapshots blocks
        them are skipped quietly (an explicit request is refused with the reason)."""
        found = self.ctx.projects.find(project) if self.ctx.projects is not None else None
        return found is None or restrictions.snapshots_allowed(found.get("config") or {})

    async def _scheduled(self, rec: dict[str, Any], sched: str, last: datetime,
                         now: datetime) -> None:
        try:
            fire = snapshot_schedule.due(sched, last, now) or snapshot_schedule.started_since(
                sched, rec.get("last_used_at", ""), last)
        except BadRequest:
            return  # a value stored before validation existed: nothing to schedule
        if not fire:
            return
        cfg = rec.get("expanded_config") or {}
        if cfg.get("snapshots.schedule.stopped", "false").lower() not in ("true", "1", "yes",
                                                                           "on"):
            if await lifecycle.host_status(self.ctx, rec) not in RUNNING:
                return
        name, expires, _ = snapshot_ops.plan_create(self.ctx, rec, {}, now)
        await self._take(rec["project"], rec["name"], name, expires, False, None)
        self.ctx.log.info("scheduled snapshot taken", instance=rec["name"], snapshot=name)
