"""Moving and copying instances between cluster members (``lxc move c1 --target node2``,
``lxc copy c1 c2 --target node3``, evacuation in ``migrate`` mode).

As LXD's ``instancePostClusteringMigrate`` / ``clusterCopyContainerInternal``, the member
the request reached orchestrates, and the transfer is a migration between the two members'
migration services (the same code as ``lxc move c1 other:``): the SOURCE member's
``migration.source`` (pull mode) and the TARGET member's ``migration.create`` (push mode),
their websockets joined over the bus by :mod:`.cluster_relay`. The target receives into
staging and imports whole or not at all, so a failure leaves the source whole and nothing
on the target.

A move keeps the instance's name, but instance records are one per project and name in the
shared ``instances`` bucket, owned by the instance services (LXD updates the row's node in
its database; nothing here may rewrite another service's record). So the target imports
the instance under a temporary name (:func:`temp_name`), then the source is deleted, then
the copy is renamed to the name: the source goes only once the target has it whole. Each
step is journaled first (:mod:`.move_journal`): a gateway that dies mid-move leaves a
record its next start ends, forward or back.

Running instances: ``--stateless`` stops, moves and starts again (LXD's order); a
stateful (live) move of a running container needs CRIU, which does not work here: LXD's
refusal. A running VM moved live goes to ``vm_live_move.live_move`` when that module exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from shared import faults
from shared.api import byte_size, url
from shared.bus import Bus
from shared.config import Config
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.log import get_logger
from shared.messages.instance import StatePutRequest
from shared.models import CreateRequest, ObjectRequest, Reply
from shared.operations import OperationHandle, Operations

from . import responses
from .cluster_relay import Relay
from .move_journal import Journal
from .placement import Placement

log = get_logger()
TRANSFER_TIMEOUT = 3600.0  # seconds for the data (LXD has no limit; a dead peer ends it)
STEP_TIMEOUT = 120.0  # a stop, start, delete or rename on a member
SETTLE_TIMEOUT = 30.0  # the other end, once one end of the transfer ended
RUNNING = ("Running", "Frozen")
# What an instance's copy takes from it (LXD's InstancePut, the writable part).
WRITABLE = ("architecture", "config", "devices", "profiles", "ephemeral", "description",
            "type")
LIVE_REFUSED = ("Unable to perform container live migration: CRIU does not work on this "
                "host. Stop the instance first, or move it with --stateless (it is stopped, "
                "moved and started again)")


@contextlib.contextmanager
def timed(step: str, name: str) -> Iterator[None]:
    """How long each step of a move took, in the gateway's debug log (the bench's 1 s
    goal: where the time goes)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        log.debug("move step", step=step, instance=name,
                  ms=round((time.perf_counter() - t0) * 1000, 1))


def temp_name(name: str) -> str:
    """The name the target holds a moving instance under until the source is gone: a valid
    instance name (at most 63 characters) that says what it is."""
    return f"{name[:48].rstrip('-')}-moving-{secrets.token_hex(3)}"


def live_mover() -> Any:
    """``vm_live_move.live_move`` when the module exists (VM live migration), else None."""
    if importlib.util.find_spec(f"{__package__}.vm_live_move") is None:
        return None
    return getattr(importlib.import_module(f"{__package__}.vm_live_move"), "live_move", None)


class Mover:
    """Moves and copies between members, inside an operation the caller owns."""

    def __init__(self, bus: Bus, ops: Operations, config: Config,
                 placement: Placement | None = None) -> None:
        self.bus, self.ops, self.config = bus, ops, config
        self.placement = placement or Placement(bus, config)
        self.journal = Journal(bus)

    # -- small steps on one member -----------------------------------------------------

    async def instance(self, project: str, name: str) -> tuple[dict[str, Any], str]:
        """The instance as its member shows it, and that member; 404 as LXD."""
        where = await self.placement.location(project, name)
        if where is None:
            raise NotFound("Instance not found")
        reply = await self.bus.request("instance", "get",
                                       ObjectRequest(project=project, name=name), node=where)
        return dict(reply.metadata or {}), where

    async def _done(self, reply: Reply, what: str, timeout: float = STEP_TIMEOUT) -> None:
        op = reply.operation or {}
        if not op.get("id"):
            return
        final = await self.ops.wait(op["id"], timeout)
        if final.get("status") != "Success":
            raise CorralError(f"{what} failed: {final.get('err') or final.get('status')}",
                              500)

    async def state(self, project: str, name: str, node: str, action: str) -> None:
        req = StatePutRequest(project=project, name=name, action=action,  # type: ignore[arg-type]
                              force=action == "stop")
        reply = await self.bus.request("instance", "state_put", req, node=node)
        await self._done(reply, f"{action.capitalize()} of {name!r} on {node!r}")

    async def delete(self, project: str, name: str, node: str) -> None:
        reply = await self.bus.request("instance", "delete",
                                       ObjectRequest(project=project, name=name), node=node)
        await self._done(reply, f"Deleting {name!r} on {node!r}")

    async def rename(self, project: str, name: str, new: str, node: str) -> None:
        reply = await self.bus.request("instance", "rename", ObjectRequest(
            project=project, name=name, body={"name": new}), node=node)
        await self._done(reply, f"Renaming {name!r} to {new!r} on {node!r}")

    # -- checks made before the operation starts ---------------------------------------

    async def check_target(self, target: str, where: str) -> str:
        """``target`` a member that may take the instance, not where it is (LXD's text)."""
        if target.startswith("@"):
            return await self.placement.choose(group=target[1:])
        await self.placement.check_target(target)
        if target == where:
            raise BadRequest("Target must be different than instance's current location")
        return target

    async def check_move(self, project: str, name: str, target: str, live: bool
                         ) -> tuple[dict[str, Any], str, str]:
        """The instance, its member and the target, or LXD's error before anything runs."""
        inst, where = await self.instance(project, name)
        target = await self.check_target(target, where)
        if inst.get("status") in RUNNING:
            if live:
                raise BadRequest(LIVE_REFUSED)
            if inst.get("ephemeral"):
                raise BadRequest("An ephemeral instance is deleted when it stops: it cannot "
                                 "be moved statelessly; stop it yourself or copy it")
        elif inst.get("status") not in ("Stopped",):
            raise BadRequest(f"Instance {name!r} is {inst.get('status')}: stop or start it "
                             "before moving it")
        return inst, where, target

    # -- the transfer ------------------------------------------------------------------

    async def transfer(self, project: str, name: str, source: str, body: dict[str, Any],
                       target: str, handle: OperationHandle | None,
                       instance_only: bool = False, label: str = "",
                       started: Callable[[str, str], Awaitable[None]] | None = None
                       ) -> None:
        """``name`` from member ``source`` to member ``target`` as ``body["name"]``
        (with ``body``'s config, devices, profiles); whole on the target when this returns,
        nothing there when it raises. Progress goes to ``handle``'s ``fs_progress``;
        ``started`` hears both ends' operation ids (the journal: a recovery hangs them up)."""
        reply = await self.bus.request("migration", "source", ObjectRequest(
            project=project, name=name,
            body={"migration": True, "instance_only": instance_only}), node=source)
        src_op = (reply.operation or {}).get("id")
        create = {**body, "source": {"type": "migration", "mode": "push",
                                     "instance_only": instance_only}}
        try:
            reply = await self.bus.request("migration", "create", CreateRequest(
                project=project, body=create), node=target)
        except BaseException:
            if src_op:  # the source waits for its websockets: end it now
                await Relay(self.bus, src_op, "none").hang_up()
            raise
        dst_op = (reply.operation or {}).get("id")
        if not src_op or not dst_op:
            raise CorralError("The migration services answered no operation", 500)
        if started is not None:
            await started(src_op, dst_op)

        async def progress(moved: int) -> None:
            if handle is not None:
                await handle.set_metadata(
                    fs_progress=f"{label or body['name']}: {byte_size(moved)}")

        relay = Relay(self.bus, src_op, dst_op, progress)
        try:
            await relay.open()
        except BaseException:
            await relay.hang_up()
            raise
        try:
            await self._settle(relay, src_op, dst_op, target)
        finally:
            await relay.close()

    async def _settle(self, relay: Relay, src_op: str, dst_op: str, target: str) -> None:
        """Wait for both ends. The target's success is the verdict (it says so only once
        it imported the instance whole); one end failing hangs up on the other."""
        waits = {asyncio.ensure_future(self.ops.wait(op, TRANSFER_TIMEOUT)): op
                 for op in (src_op, dst_op)}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            result = first.result()
            side = "target" if waits[first] == dst_op else "source"
            if side == "target" and result.get("status") == "Success":
                src = await self.ops.wait(src_op, SETTLE_TIMEOUT)
                if src.get("status") != "Success":
                    log.warning("move: the target has the instance, the source said",
                                error=src.get("err"), status=src.get("status"))
                return
            if result.get("status") == "Success":  # the source sent all: the target's word
                result, side = await self.ops.wait(dst_op, TRANSFER_TIMEOUT), "target"
                if result.get("status") == "Success":
                    return
            await relay.hang_up()
            other = [t for t in waits if t is not first][0]
            try:
                await asyncio.wait_for(asyncio.shield(other), SETTLE_TIMEOUT)
            except asyncio.TimeoutError:
                pass
            raise CorralError(f"Instance transfer to {target!r} failed on the {side}: "
                              f"{result.get('err') or result.get('status')}", 500)
        finally:
            for t in waits:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    # -- move and copy -----------------------------------------------------------------

    async def move(self, project: str, name: str, target: str, handle: OperationHandle | None,
                   inst: dict[str, Any], where: str,
                   config: dict[str, str | None] | None = None) -> None:
        """Move a checked instance (:meth:`check_move`) from ``where`` to ``target``: stop
        (stateless), transfer under a temporary name, delete the source, rename, start.
        ``config`` changes the moved instance's config on the way (None: the key goes),
        as an evacuation's ``volatile.evacuate.origin``."""
        running = inst.get("status") in RUNNING
        tmp = temp_name(name)
        key = handle.id if handle is not None else f"move-{secrets.token_hex(8)}"
        # Before the first irreversible step (the stop): what a recovery needs to end it
        await self.journal.begin(key, {"project": project, "name": name, "tmp": tmp,
                                       "source": where, "target": target,
                                       "running": running, "gateway": self.config.node})
        try:
            await self._move(project, name, target, handle, inst, where, config, tmp,
                             running, key)
        except CorralError:
            await self._end_journal(key)
            raise
        await self._end_journal(key)

    async def _end_journal(self, key: str) -> None:
        try:
            await self.journal.end(key)
        except CorralError as exc:  # a stale record is ended by the next start: harmless
            log.warning("move journal record not deleted", op=key, error=exc.message)

    async def _move(self, project: str, name: str, target: str,
                    handle: OperationHandle | None, inst: dict[str, Any], where: str,
                    config: dict[str, str | None] | None, tmp: str, running: bool,
                    key: str) -> None:
        if running:
            await _say(handle, f"Stopping {name!r} on {where!r}")
            await self.state(project, name, where, "stop")
        body = {k: inst[k] for k in WRITABLE if k in inst}
        body["name"] = tmp
        if config:
            merged = {**(body.get("config") or {}), **config}
            body["config"] = {k: v for k, v in merged.items() if v is not None}

        async def started(src_op: str, dst_op: str) -> None:
            await self.journal.step(key, "transfer", src_op=src_op, dst_op=dst_op)
            faults.point("cluster_move:transfer_started")

        try:
            await _say(handle, f"Transferring {name!r} to {target!r}")
            with timed("transfer", name):
                await self.transfer(project, name, where, body, target, handle,
                                    label=name, started=started)
            faults.point("cluster_move:after_transfer")
            await self.journal.step(key, "delete")
            await _say(handle, f"Deleting {name!r} on {where!r}")
            try:
                with timed("delete", name):
                    await self.delete(project, name, where)
            except BaseException:
                await self._discard(project, tmp, target)
                raise
        except BaseException:
            if running:  # the source is whole: as it was
                try:
                    await self.state(project, name, where, "start")
                except CorralError as exc:
                    log.warning("move: source not started again", error=exc.message)
            raise
        faults.point("cluster_move:after_delete")
        await self.journal.step(key, "rename")
        faults.point("cluster_move:before_rename")
        try:
            with timed("rename", name):
                await self.rename(project, tmp, name, target)
        except CorralError as exc:
            raise CorralError(f"{exc.message}. The instance is whole on {target!r} as "
                              f"{tmp!r}: `lxc rename {tmp} {name}`", exc.code) from None
        if running:
            await self.journal.step(key, "start")
            await _say(handle, f"Starting {name!r} on {target!r}")
            await self.state(project, name, target, "start")

    async def _discard(self, project: str, name: str, node: str) -> None:
        try:
            await self.delete(project, name, node)
        except CorralError as exc:
            log.warning("move: the target's copy was not deleted", instance=name,
                        error=exc.message)

    async def copy(self, project: str, source: str, where: str, body: dict[str, Any],
                   target: str, handle: OperationHandle | None) -> None:
        """``lxc copy c1 c2 --target`` across members: the copy is made on the target
        under its own name, from the request's body (the client's config and devices)."""
        src = body.get("source") or {}
        instance_only = bool(src.get("instance_only") or src.get("container_only"))
        new = {k: body[k] for k in WRITABLE if k in body}
        new["name"] = body["name"]
        await _say(handle, f"Transferring {source!r} to {target!r} as {body['name']!r}")
        await self.transfer(project, source, where, new, target, handle, instance_only)


async def _say(handle: OperationHandle | None, text: str) -> None:
    if handle is not None:
        await handle.set_metadata(progress=text)


# -- the routes' side (routes/migration.py) ----------------------------------------------

def mover_of(ctx: Any) -> Mover:
    if ctx.placement is None:
        ctx.placement = Placement(ctx.bus, ctx.config)
    return Mover(ctx.bus, ctx.ops, ctx.config, ctx.placement)


async def move(ctx: Any, request: web.Request, req: ObjectRequest) -> web.StreamResponse:
    """``POST /1.0/instances/<name>?target=<member>`` ``{"migration": true, "live"}``:
    checked now (400/404/503 before any operation), then moved in an operation."""
    body = req.body or {}
    target = str(request.query.get("target") or "")
    mover = mover_of(ctx)
    name = req.name
    new = body.get("name") or name
    if new != name:
        raise BadRequest("Renaming while moving to another member is not supported: "
                         "move it, then `lxc rename`")
    if body.get("live"):  # a running VM moves live when VM live migration is there
        inst, _where = await mover.instance(req.project, name)
        live_move = live_mover()
        if inst.get("type") == "virtual-machine" and inst.get("status") in RUNNING \
                and live_move is not None:
            return await live_move(ctx, request, inst, target)
    inst, where, target = await mover.check_move(req.project, name, target,
                                                 bool(body.get("live")))

    async def run(handle: OperationHandle) -> dict[str, Any]:
        await mover.move(req.project, name, target, handle, inst, where)
        return {}

    resource = url("instances", name, req.project)
    op = await ctx.ops.start("Migrating instance", run, project=req.project,
                             resources={"instances": [resource], "containers": [resource]})
    return responses.async_(op.lxd())


async def copy(ctx: Any, request: web.Request, req: CreateRequest) -> web.StreamResponse | None:
    """``POST /1.0/instances?target=<member>`` ``{"source": {"type": "copy"}}`` whose source
    is on another member: a migration between them. None: not that (the usual create)."""
    src = req.body.get("source") if isinstance(req.body, dict) else None
    target = request.query.get("target") or ""
    if not ctx.config.cluster or not target or not isinstance(src, dict) \
            or src.get("type") != "copy" or not isinstance(src.get("source"), str):
        return None
    mover = mover_of(ctx)
    project = str(src.get("project") or req.project)
    if project != req.project:
        return None  # a copy between projects: the instance service's
    parent, _, snap = src["source"].partition("/")
    where = await mover.placement.location(project, parent)
    if where is None:
        raise NotFound("Source instance not found")
    target = await mover.placement.check_target(target) if not target.startswith("@") \
        else await mover.placement.choose(project, req.body, group=target[1:])
    if target == where:
        return None  # a copy on the member that has the source: the instance service's
    if snap:
        raise BadRequest("Copying a snapshot to another cluster member is not supported "
                         "yet: copy it on its member (without --target), then move the copy")
    if src.get("refresh"):
        raise BadRequest("--refresh across cluster members is not supported yet: delete "
                         "the copy and copy again")
    name = req.body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("An instance name is required for a copy")
    if await mover.placement.location(req.project, name) is not None:
        raise Conflict(f"Instance {name!r} already exists")

    async def run(handle: OperationHandle) -> dict[str, Any]:
        await mover.copy(req.project, parent, where, req.body, target, handle)
        return {}

    resource = url("instances", name, req.project)
    op = await ctx.ops.start("Creating instance", run, project=req.project,
                             resources={"instances": [resource], "containers": [resource]})
    return responses.async_(op.lxd())
