"""``lxc cluster evacuate`` / ``lxc cluster restore``: a member out for maintenance and back.

LXD 5.0 (``clusterNodeStatePost``): evacuating marks the member EVACUATED (placement skips
it), then each instance located there is stopped, or moved when its ``cluster.evacuate``
(or the request's ``mode``) says ``migrate``/``live-migrate`` and a target exists; restore
marks it back and starts what the evacuation stopped. Here:

* The state and the list of what was stopped live in the member's record (``members``
  bucket, ``Member.evacuated``/``evacuated_instances``): replicated like the rest, kept by
  the member's heartbeats, and written as each instance stops, so a gateway dying mid-way
  loses nothing restore needs. LXD keeps the second in ``volatile.last_state.power``; the
  gateway may not write instance records, and the member's record is the natural owner.
* ``migrate``, ``live-migrate`` and ``auto`` (the default) MOVE each instance to the
  member placement chooses (placement.py, as a launch; the evacuated member is skipped),
  cold (cluster_move.py: a running one is stopped, moved and started there: CRIU does not
  work here, so ``live-migrate`` is stateless for containers); in ``live-migrate`` mode a
  running VM with ``migration.stateful=true`` moves live (vm_live_move.py), and back live
  at restore (remembered in the member's ``evacuated_instances`` with ``@live``).
  ``auto`` moves only an instance whose devices can all move (LXD's canMigrate: the root
  disk, NICs; not a disk from the host or a per-member custom volume): the others are
  stopped in place; ``stop`` keeps every instance in place, stopped. The moved instance
  carries ``volatile.evacuate.origin`` (LXD's key) in its config, written by the move
  itself (the gateway may not write instance records); restore moves every instance
  whose origin is the member back, removing the key, and starts what it had stopped.
  When no member can take an instance, or its move fails, it is stopped in place (LXD
  leaves it where it is) and the operation names it and why (``evacuation_not_moved``).
* One instance failing to stop does not stop the others: the operation fails at the end
  naming each failure (``evacuation_failed``); the member stays evacuated (what did stop is
  remembered) so ``restore`` still brings those back.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, Callable

from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.messages.instance import StatePutRequest
from shared.operations import OperationHandle, Operations
from shared.state import Store

from . import vm_live_move
from .cluster_move import Mover

# LXD's evacuateHostShutdownDefaultTimeout: seconds for a clean shutdown before a kill,
# unless the instance's boot.host_shutdown_timeout says otherwise.
SHUTDOWN_TIMEOUT = 30
MODES = ("", "auto", "stop", "migrate", "live-migrate")  # LXD's cluster.evacuate values
RUNNING = ("Running", "Frozen")
MOVING = ("auto", "migrate", "live-migrate")  # the modes that move (see above)
ORIGIN = "volatile.evacuate.origin"  # LXD's: the member an evacuation moved it from
# In ``evacuated_instances``, "project/name" + LIVE: a VM the evacuation moved live, which
# restore moves back live (its config could not take ORIGIN; the start loop skips it).
LIVE = "@live"


def ref(rec: dict[str, Any]) -> str:
    return f"{rec.get('project') or 'default'}/{rec['name']}"


def mode_of(rec: dict[str, Any], requested: str) -> str:
    """The request's ``mode`` wins over the instance's ``cluster.evacuate`` (LXD)."""
    if requested and requested != "auto":
        return requested
    cfg = rec.get("expanded_config") or rec.get("config") or {}
    return cfg.get("cluster.evacuate") or "auto"


def unmovable(rec: dict[str, Any]) -> str | None:
    """The first device that keeps ``auto`` from moving the instance (LXD's canMigrate:
    the root disk and NICs move; a host path or a per-member custom volume does not)."""
    devices = rec.get("expanded_devices") or rec.get("devices") or {}
    for name, dev in sorted(devices.items()):
        kind = (dev or {}).get("type")
        if kind == "nic" or kind == "none" or (kind == "disk" and dev.get("path") == "/"):
            continue
        return str(name)
    return None


def shutdown_timeout(rec: dict[str, Any]) -> int:
    cfg = rec.get("expanded_config") or rec.get("config") or {}
    try:
        return max(0, int(cfg.get("boot.host_shutdown_timeout", SHUTDOWN_TIMEOUT)))
    except (TypeError, ValueError):
        return SHUTDOWN_TIMEOUT


async def edit_member(members: Store, name: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Compare-and-set ``change`` on the member's record (its heartbeat writes the same key
    every few seconds); 404 when there is no such member."""
    for _ in range(40):
        found = await members.get(name)
        if found is None or found[0].get("removed"):
            raise NotFound("Cluster member not found")
        new = change(dict(found[0]))
        try:
            await members.update(name, new, found[1])
            return new
        except Conflict:
            await asyncio.sleep(0.05)
    raise Conflict("The member's record kept changing; retry")


class Evacuation:
    """One evacuate or restore of member ``name``, run inside its operation."""

    def __init__(self, bus: Bus, ops: Operations, members: Store, instances: Store,
                 name: str) -> None:
        self.bus = bus
        self.ops = ops
        self.members = members
        self.instances = instances
        self.name = name
        self.mover = Mover(bus, ops, bus.config)

    async def located(self) -> list[dict[str, Any]]:
        """The instance records located on the member, by project and name."""
        recs = [r for r in (await self.instances.items()).values()
                if r.get("location") == self.name and r.get("name")]
        return sorted(recs, key=ref)

    async def _state(self, rec: dict[str, Any], action: str, timeout: float = -1,
                     force: bool = False) -> None:
        """``action`` on the instance through its node's instance service, waited for;
        a failed operation raises its error."""
        req = StatePutRequest(project=rec.get("project") or "default", name=rec["name"],
                              action=action, timeout=timeout, force=force)
        reply = await self.bus.request("instance", "state_put", req, node=self.name)
        op = reply.operation or {}
        if not op.get("id"):
            return
        wait = (timeout if timeout > 0 else SHUTDOWN_TIMEOUT) + 60
        final = await self.ops.wait(op["id"], wait)
        if final.get("status") != "Success":
            raise CorralError(final.get("err") or f"still {final.get('status')} after "
                              f"{wait:.0f}s", 500)

    async def stop(self, rec: dict[str, Any]) -> None:
        """A clean shutdown within the instance's timeout, then a forced stop (LXD)."""
        try:
            await self._state(rec, "stop", timeout=shutdown_timeout(rec))
        except CorralError as first:
            try:
                await self._state(rec, "stop", force=True)
            except CorralError as exc:
                if "already stopped" not in exc.message.lower():
                    raise CorralError(f"{exc.message} (clean shutdown: {first.message})",
                                      exc.code) from None

    async def evacuate(self, handle: OperationHandle, requested_mode: str) -> dict[str, Any]:
        stopped: list[str] = []
        moved: dict[str, str] = {}
        failed: dict[str, str] = {}
        not_moved: dict[str, str] = {}
        for rec in await self.located():
            name, project = rec["name"], rec.get("project") or "default"
            mode = mode_of(rec, requested_mode)
            if mode in MOVING:
                why = await self.migrate(handle, rec, mode, moved)
                if why is None:
                    continue
                not_moved[ref(rec)] = why
            if rec.get("status") not in RUNNING:
                continue
            await handle.set_metadata(
                evacuation_progress=f"Stopping {name!r} in project {project!r}")
            try:
                await self.stop(rec)
            except CorralError as exc:
                failed[ref(rec)] = exc.message
                continue
            stopped.append(ref(rec))

            def remember(m: dict[str, Any], r: str = ref(rec)) -> dict[str, Any]:
                done = list(m.get("evacuated_instances") or [])
                return {**m, "evacuated_instances": [*done, r] if r not in done else done}

            await edit_member(self.members, self.name, remember)
        result: dict[str, Any] = {"evacuation_progress": "Done",
                                  "evacuation_stopped": stopped}
        if moved:
            result["evacuation_moved"] = moved
        if not_moved:
            result["evacuation_not_moved"] = not_moved
        await handle.set_metadata(**result, **({"evacuation_failed": failed} if failed
                                               else {}))
        if failed:
            raise CorralError(
                f"Failed to stop {len(failed)} instance(s) on {self.name}: " + "; ".join(
                    f"{k}: {v}" for k, v in failed.items()) + ". The member stays "
                f"evacuated and the others are stopped: stop these by hand, or `lxc "
                f"cluster restore {self.name}` to start again what was stopped", 500)
        return result

    async def migrate(self, handle: OperationHandle, rec: dict[str, Any], mode: str,
                      moved: dict[str, str]) -> str | None:
        """Move ``rec`` to the member placement chooses; None when moved, else why not
        (the caller stops it in place)."""
        name, project = rec["name"], rec.get("project") or "default"
        try:
            inst, where = await self.mover.instance(project, name)
        except CorralError as exc:
            return f"it could not be read ({exc.message})"
        if inst.get("status") not in ("Stopped", "Running"):
            return f"it is {inst.get('status')}"
        if inst.get("ephemeral") and inst.get("status") == "Running":
            return "it is ephemeral (a stop deletes it, and a move stops it)"
        if mode == "auto" and (device := unmovable(inst)):
            return f"its device {device!r} cannot move to another member (cluster.evacuate" \
                "=auto): stopped on the evacuated member"
        try:
            target = await self.mover.placement.choose(project)
        except (Unavailable, BadRequest) as exc:
            return f"no member can take it ({exc.message}): stopped on the evacuated member"
        if target == self.name:
            return "no other member can take it: stopped on the evacuated member"
        await handle.set_metadata(evacuation_progress=f"Migrating {name!r} in project "
                                                      f"{project!r} to {target!r}")
        try:
            origin = (inst.get("config") or {}).get(ORIGIN) or self.name
            if live_movable(inst, mode):
                await self.live(handle, project, name, where, target, origin)
            else:
                await self.mover.move(project, name, target, None, inst, where,
                                      config={ORIGIN: origin})
        except CorralError as exc:
            return f"moving it to {target!r} failed ({exc.message}): stopped on the " \
                "evacuated member"
        moved[ref(rec)] = target
        return None

    async def live(self, handle: OperationHandle, project: str, name: str, where: str,
                   target: str, origin: str) -> None:
        """A running VM moved live (vm_live_move, journaled); then remembered in its
        origin member's record (a live move cannot write ``volatile.evacuate.origin``:
        an update keeps the record's volatile keys), for restore."""
        ctx = types.SimpleNamespace(bus=self.bus, config=self.bus.config)
        await vm_live_move.migrate(ctx, handle, project, name, where, target)
        if origin:  # restore brings it back (see LIVE)
            item = f"{project}/{name}{LIVE}"

            def remember(m: dict[str, Any]) -> dict[str, Any]:
                done = list(m.get("evacuated_instances") or [])
                return {**m, "evacuated_instances": done + [item] * (item not in done)}

            await edit_member(self.members, origin, remember)

    async def restore(self, handle: OperationHandle, remembered: list[str]
                      ) -> dict[str, Any]:
        """Move back what the evacuation moved (``volatile.evacuate.origin``), then start
        what it stopped, where it still is and not running."""
        started: list[str] = []
        failed: dict[str, str] = {}
        returned: list[str] = []
        for rec in sorted((await self.instances.items()).values(), key=lambda r: ref(r)
                          if r.get("name") else ""):
            if not rec.get("name") or (rec.get("config") or {}).get(ORIGIN) != self.name:
                continue
            project, name = rec.get("project") or "default", rec["name"]
            await handle.set_metadata(evacuation_progress=f"Migrating {name!r} in project "
                                                          f"{project!r} to {self.name!r}")
            try:
                inst, where = await self.mover.instance(project, name)
                if where == self.name:
                    continue
                await self.mover.move(project, name, self.name, None, inst, where,
                                      config={ORIGIN: None})
                returned.append(ref(rec))
            except CorralError as exc:
                failed[ref(rec)] = f"not moved back: {exc.message}"
        for item in [i for i in remembered if i.endswith(LIVE)]:
            project, _, name = item[:-len(LIVE)].partition("/")
            try:
                inst, where = await self.mover.instance(project, name)
                if where == self.name:
                    continue
                await handle.set_metadata(evacuation_progress=f"Migrating {name!r} in "
                                          f"project {project!r} to {self.name!r}")
                if live_movable(inst, "live-migrate"):
                    await self.live(handle, project, name, where, self.name, "")
                else:
                    await self.mover.move(project, name, self.name, None, inst, where)
                returned.append(item[:-len(LIVE)])
            except NotFound:
                continue  # deleted since
            except CorralError as exc:
                failed[item[:-len(LIVE)]] = f"not moved back: {exc.message}"
        here = {ref(r): r for r in await self.located()}
        for item in remembered:
            rec = here.get(item)
            if rec is None or rec.get("status") in RUNNING:
                continue  # deleted or moved since, or started by someone already
            project, _, name = item.partition("/")
            await handle.set_metadata(
                evacuation_progress=f"Starting {name!r} in project {project!r}")
            try:
                await self._state(rec, "start")
                started.append(item)
            except CorralError as exc:
                failed[item] = exc.message
        result: dict[str, Any] = {"evacuation_progress": "Done",
                                  "evacuation_started": started,
                                  "evacuation_returned": returned}
        await handle.set_metadata(**result, **({"evacuation_failed": failed} if failed
                                               else {}))
        if failed:
            raise CorralError(
                f"Failed to restore {len(failed)} instance(s) on {self.name}: " + "; ".join(
                    f"{k}: {v}" for k, v in failed.items()) + ". The member is back "
                "online; start these with `lxc start`", 500)
        return result


def live_movable(inst: dict[str, Any], mode: str) -> bool:
    """A running VM that says ``migration.stateful=true``, in ``live-migrate`` mode, moves
    live (LXD's evacuation: the guest keeps running) rather than stop-move-start."""
    if mode != "live-migrate" or inst.get("type") != "virtual-machine" \
            or inst.get("status") not in RUNNING:
        return False
    try:
        vm_live_move.check(inst, "another member")  # stateful, no extra disk (LXD's)
    except BadRequest:
        return False
    return True


def check_mode(mode: object) -> str:
    if mode is None:
        return ""
    if not isinstance(mode, str) or mode not in MODES:
        raise BadRequest(f"Invalid evacuation mode {str(mode)[:40]!r}: use one of "
                         f"{', '.join(m for m in MODES if m)}")
    return mode
