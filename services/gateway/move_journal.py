"""The journal of moves between cluster members, and their end after a gateway died.

Why: a cold move (:mod:`.cluster_move`) is several steps on two members run by the
gateway that got the request: transfer under a temporary name, delete the source, rename
the copy, start it again after ``--stateless``. A gateway killed between two steps left
the instance stopped, or under its temporary name, or both ends of the transfer waiting,
and nobody finished it. Each move writes a record to the ``moves`` bucket *before* each
irreversible step (its ``stage``), and deletes it once whole. The gateway of the same
member, at its next start, finds its records (no move of its own runs yet) and ends each:

- forward when the target holds the whole instance (the transfer succeeded: its stage is
  past ``transfer``, or the target's migration operation says Success): the source is
  deleted if still there, the copy renamed to the name, started if it ran before;
- back when it does not: the transfer's ends are hung up, the target's partial copy
  deleted, the source started again if the move stopped it.

A VM's live move (:mod:`.vm_live_move`, ``kind: live``) has its own stages: before the
send, the target's preparation is aborted (the VM never left); once the send succeeded
(the record then holds the spec), the source's copy is cleaned and the target finishes
(the record's location becomes the target: the running guest is kept); a send cut short
is aborted on the target while the source still runs the guest.

The move's operation is failed by the restart (``Operations.claim``); its error then says
what the recovery did, so a client reading it knows where the instance is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from shared.bus import Bus
from shared.errors import CorralError, NotFound
from shared.log import get_logger
from shared.state import Store

from .cluster_relay import Relay

log = get_logger()
BUCKET = "moves"
STAGES = ("transfer", "delete", "rename", "start")
RETRY_FOR = 600.0  # seconds a recovery keeps trying while a member does not answer
RETRY_EVERY = 3.0


class Journal:
    """One record per move in flight, keyed by the move's operation id."""

    def __init__(self, bus: Bus) -> None:
        self.store = Store(bus, BUCKET, history=1,
                           description="Corral moves between cluster members in flight")
        self._opened = False

    async def open(self) -> "Journal":
        if not self._opened:
            await self.store.open()
            self._opened = True
        return self

    async def begin(self, key: str, record: dict[str, Any], stage: str = "transfer") -> None:
        await self.open()
        await self.store.put(key, {**record, "stage": stage, "since": time.time()})

    async def step(self, key: str, stage: str, **extra: Any) -> None:
        """Record ``stage`` (and ``extra``) before the step it names is taken."""
        found = await self.store.get(key)
        record = found[0] if found else {}
        await self.store.put(key, {**record, **extra, "stage": stage})

    async def end(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except NotFound:
            pass

    async def mine(self, node: str) -> dict[str, dict[str, Any]]:
        """The moves the gateway of ``node`` was running."""
        await self.open()
        return {k: v for k, v in (await self.store.items()).items()
                if v.get("gateway") == node}


class Recovery:
    """Ends the moves a dead gateway of this member left (see the module docstring)."""

    def __init__(self, mover: Any, journal: Journal, node: str,
                 live: Callable[[Any, dict[str, Any]], Awaitable[str]] | None = None
                 ) -> None:
        """``live`` ends a VM's live move (vm_live_move.recover, passed in: that module
        journals through this one)."""
        self.mover, self.journal, self.node, self.live = mover, journal, node, live

    async def run(self) -> None:
        """Every move this member's gateway left, each retried while a member is away."""
        try:
            moves = await self.journal.mine(self.node)
        except Exception as exc:
            log.warning("moves journal not read", error=str(exc))
            return
        await asyncio.gather(*(self._patiently(k, v) for k, v in moves.items()))

    async def _patiently(self, key: str, record: dict[str, Any]) -> None:
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                outcome = await self.finish(record)
                await self.journal.end(key)
                log.warning("move left by a dead gateway finished", op=key,
                            instance=record.get("name"), outcome=outcome)
                await self._tell(key, outcome)
                return
            except Exception as exc:  # a member away, the bus reconnecting: again later
                error = exc.message if isinstance(exc, CorralError) else repr(exc)
                if time.monotonic() > deadline:
                    log.error("move left by a dead gateway not finished", op=key,
                              instance=record.get("name"), error=error)
                    return
                log.info("move recovery waits", op=key, error=error)
                await asyncio.sleep(RETRY_EVERY)
                found = await self.journal.store.get(key)
                if found is None:
                    return
                record = found[0]

    async def finish(self, record: dict[str, Any]) -> str:
        """Forward or back, by what the members hold; returns what it did, in words."""
        m = self.mover
        if record.get("kind") == "live" and self.live is not None:  # a VM's: its steps
            return str(await self.live(m, record))
        project, name, tmp = record["project"], record["name"], record["tmp"]
        source, target = record["source"], record["target"]
        running = bool(record.get("running"))
        stage = record.get("stage", "transfer")
        tmp_at = await m.placement.location(project, tmp)
        whole = stage != "transfer"
        if stage == "transfer":
            whole = await self._transfer_ended(record)
        if not whole:
            if tmp_at is not None:
                await m.delete(project, tmp, tmp_at)
            if running and await m.placement.location(project, name) == source:
                await self._start(project, name, source)
            return f"moved back: {name!r} stays on {source!r}"
        if tmp_at is not None:
            if await m.placement.location(project, name) == source:
                await m.delete(project, name, source)
            await m.rename(project, tmp, name, target)
        if running:
            await self._start(project, name, target)
        return f"moved forward: {name!r} is on {target!r}"

    async def _transfer_ended(self, record: dict[str, Any]) -> bool:
        """Hang up a transfer cut short; whether the target imported the instance whole
        (its migration operation's word, once both ends stopped waiting for the relay)."""
        src_op, dst_op = record.get("src_op"), record.get("dst_op")
        if src_op or dst_op:
            await Relay(self.mover.bus, src_op or "none", dst_op or "none").hang_up()
        if not dst_op:
            return False
        try:
            final = await self.mover.ops.wait(dst_op, 120.0)
        except NotFound:
            return False
        return final.get("status") == "Success"

    async def _start(self, project: str, name: str, node: str) -> None:
        inst, _ = await self.mover.instance(project, name)
        if inst.get("status") not in ("Running", "Frozen"):
            await self.mover.state(project, name, node, "start")

    async def _tell(self, op_id: str, outcome: str) -> None:
        """The move's operation, failed by the restart, says how the move ended."""
        ops = self.mover.ops
        for _ in range(20):  # claim() fails it at the gateway's start: usually done now
            found = await ops.store.get(op_id)
            if found is None:
                return
            rec, rev = found
            if rec.get("status") not in ("Success", "Failure", "Cancelled"):
                await asyncio.sleep(0.5)
                continue
            if rec.get("status") == "Failure" and "move was" not in str(rec.get("err")):
                rec = {**rec, "err": f"{rec.get('err')}; the move was finished at its "
                       f"start: {outcome}"}
                try:
                    await ops.store.update(op_id, rec, rev)
                except CorralError:
                    pass
            return
