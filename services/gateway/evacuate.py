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
* Moving an instance between members does not exist yet. LXD, when no member can take an
  instance being migrated, leaves it stopped on the evacuated member and goes on; every
  mode does the same here, and the operation names each instance that was not moved and
  why (``evacuation_not_moved``), so nothing is silent.
* One instance failing to stop does not stop the others: the operation fails at the end
  naming each failure (``evacuation_failed``); the member stays evacuated (what did stop is
  remembered) so ``restore`` still brings those back.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.messages.instance import StatePutRequest
from shared.operations import OperationHandle, Operations
from shared.state import Store

# LXD's evacuateHostShutdownDefaultTimeout: seconds for a clean shutdown before a kill,
# unless the instance's boot.host_shutdown_timeout says otherwise.
SHUTDOWN_TIMEOUT = 30
MODES = ("", "auto", "stop", "migrate", "live-migrate")  # LXD's cluster.evacuate values
RUNNING = ("Running", "Frozen")
NOT_MOVED = ("moving instances between members is not built yet: stopped on the "
             "evacuated member, `lxc cluster restore` starts it there")


def ref(rec: dict[str, Any]) -> str:
    return f"{rec.get('project') or 'default'}/{rec['name']}"


def mode_of(rec: dict[str, Any], requested: str) -> str:
    """The request's ``mode`` wins over the instance's ``cluster.evacuate`` (LXD)."""
    if requested and requested != "auto":
        return requested
    cfg = rec.get("expanded_config") or rec.get("config") or {}
    return cfg.get("cluster.evacuate") or "auto"


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
        failed: dict[str, str] = {}
        not_moved: dict[str, str] = {}
        for rec in await self.located():
            name, project = rec["name"], rec.get("project") or "default"
            mode = mode_of(rec, requested_mode)
            if mode in ("migrate", "live-migrate"):
                not_moved[ref(rec)] = f"cluster.evacuate={mode}: {NOT_MOVED}"
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

    async def restore(self, handle: OperationHandle, remembered: list[str]
                      ) -> dict[str, Any]:
        """Start what the evacuation stopped, where it still is and not running."""
        here = {ref(r): r for r in await self.located()}
        started: list[str] = []
        failed: dict[str, str] = {}
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
                                  "evacuation_started": started}
        await handle.set_metadata(**result, **({"evacuation_failed": failed} if failed
                                               else {}))
        if failed:
            raise CorralError(
                f"Failed to start {len(failed)} instance(s) on {self.name}: " + "; ".join(
                    f"{k}: {v}" for k, v in failed.items()) + ". The member is back "
                "online; start these with `lxc start`", 500)
        return result


def check_mode(mode: object) -> str:
    if mode is None:
        return ""
    if not isinstance(mode, str) or mode not in MODES:
        raise BadRequest(f"Invalid evacuation mode {str(mode)[:40]!r}: use one of "
                         f"{', '.join(m for m in MODES if m)}")
    return mode
