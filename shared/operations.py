"""Operations as LXD has them, kept in the ``operations`` KV bucket.

Whoever starts slow work (any service) creates the operation here and runs it as a task;
any gateway replica answers ``/1.0/operations`` from the bucket. Each state change is a KV
write plus an ``operation`` event. Finished operations stay readable for
``operation_retention`` seconds (LXD forgets them after 5 s, losing exec exit codes).
Cancel requests reach the running task on ``corral.operations.<id>.cancel``.

Operations end, even when the process running one dies. Each record names its *owner*: the
NATS micro service (``corral-<svc>``), its node and its micro instance id, which nats.micro
answers on ``$SRV.PING.corral-<svc>.<id>`` for as long as that process lives. So:

- a service that starts again fails every unfinished operation of its earlier incarnation
  on this node (:meth:`Operations.claim`), before it answers any request;
- a gateway sweeps unfinished operations every few seconds (:meth:`Operations.fail_orphans`)
  and fails those whose owner has not answered a ping for ``OWNER_GRACE`` seconds (the
  owner may be reconnecting after a nats-server restart: a short absence is not death);
- a service that is stopped (SIGTERM) cancels its running operations, which undo their
  work, and records them failed with the reason (:meth:`Operations.shutdown`).
Each is a KV write plus an ``operation`` event, so a client waiting on ``/wait`` or on the
events websocket (as ``lxc launch`` does) gets the error instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any, Awaitable, Callable

import nats.errors
import nats.js.errors as jse
from nats.js.kv import KV_DEL, KV_PURGE

from . import codec, presence, subjects
from .bus import Bus, bus_error
from .config import env_seconds
from .errors import BadRequest, Conflict, CorralError, Forbidden, NotFound, Unavailable
from .events import Events
from .log import get_logger, operation_id
from .models import Operation, OperationStatus, lxd_time, utcnow
from .state import Store

BUCKET = "operations"
# How long an owner may be unreachable before its operations are failed (seconds): longer
# than a service takes to reconnect after a nats-server restart (about 2 s here).
# CORRAL_OWNER_GRACE: the crash tests, which wait it out on purpose, make it shorter.
OWNER_GRACE = env_seconds("CORRAL_OWNER_GRACE", 6.0, 1.0)
# Unfinished operations without an owner were made before owners were recorded: no process
# can be running them once every service has restarted with this code.
UNOWNED_GRACE = 30.0
FINAL_SEEN_LIMIT = 4096  # finished operations a process keeps from their events
# ... and for how long (seconds): the read that follows a final event at once (lxc exec's
# exit code) is what it is for; after that the shared record is read again, so a record
# another replica deleted (its own retention, a sweep) is gone for this reader too.
FINAL_SEEN_TTL = 5.0
# A wait's KV watch is an ephemeral JetStream consumer; stopping the watcher only
# unsubscribes, and nats-py's default leaves the consumer on the server for 5 minutes.
# After a burst of operations nats-server held hundreds of them (~27 MiB of its memory
# after the speed bench). A subscribed watcher is never inactive, so this only ends the
# consumer of a wait that is over.
WATCH_CONSUMER_IDLE = 5.0
log = get_logger()


def parse_lxd_time(value: str) -> float:
    """Seconds since the epoch from LXD's ``2026-11-28T05:54:48.616004821Z``."""
    head, _, frac = value.rstrip("Z").partition(".")
    ts = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=utcnow().tzinfo)
    return ts.timestamp() + (float("0." + frac) if frac else 0.0)


def is_expired(op: dict[str, Any], retention: float, now: float | None = None) -> bool:
    if op.get("status") not in OperationStatus.FINAL:
        return False
    return (now or time.time()) - parse_lxd_time(op["updated_at"]) > retention


class OperationHandle:
    """What a running operation's code gets: its id and a way to report progress."""

    def __init__(self, ops: "Operations", op: Operation) -> None:
        self._ops = ops
        self.op = op

    @property
    def id(self) -> str:
        return self.op.id

    async def set_metadata(self, **metadata: Any) -> None:
        self.op.metadata = {**(self.op.metadata or {}), **metadata}
        await self._ops._save(self.op)

    async def progress(self, stage: str, percent: int, speed: int | None = None,
                       text: str | None = None) -> None:
        """LXD's progress shape: ``<stage>_progress`` text plus ``progress`` dict."""
        prog = {"percent": str(percent), "stage": stage}
        if speed is not None:
            prog["speed"] = str(speed)
        await self.set_metadata(**{f"{stage}_progress": text or f"{percent}%",
                                   "progress": prog})


Runner = Callable[[OperationHandle], Awaitable[dict[str, Any] | None]]


class Operations:
    def __init__(self, bus: Bus, events: Events, location: str = "none") -> None:
        self.bus = bus
        self.events = events
        self.location = location
        self.store = Store(bus, BUCKET, history=1, description="Corral operations")
        self.retention = bus.config.operation_retention
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Who runs the operations this process starts (see the module docstring).
        self.owner: dict[str, str] | None = None
        self._stopping: str | None = None
        self._missing: dict[str, float] = {}  # op id -> when its owner was first missed
        # op id -> its last update (epoch s), for operations read finished (fail_orphans,
        # expire): a finished operation never changes, so neither reads it again
        self._finished: dict[str, float] = {}
        # Finished operations as their last event showed them (see remember_final).
        self._final_seen: dict[str, tuple[float, dict[str, Any]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        # Finished operations as list() read them: they never change again (see list).
        self._listed_final: dict[str, dict[str, Any]] = {}

    async def open(self) -> "Operations":
        await self.store.open()
        return self

    # -- owners ----------------------------------------------------------------------------

    async def claim(self, service: str, node: str, instance_id: str) -> int:
        """Become the owner of new operations; fail what an earlier incarnation left.

        ``service`` is the micro service name (``corral-instance``), ``instance_id`` the
        micro id this process answers pings on. Returns how many operations it failed.
        """
        self.owner = {"service": service, "node": node, "id": instance_id}
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_reconnects())
        short = service.removeprefix("corral-")
        failed = 0
        for op_id, rec in (await self.store.items()).items():
            owner = rec.get("owner") or {}
            if rec.get("status") in OperationStatus.FINAL or owner.get("service") != service \
                    or owner.get("node") != node or owner.get("id") == instance_id:
                continue
            if await self._fail(op_id, f"The {short} service restarted before the "
                                "operation finished"):
                failed += 1
        if failed:
            log.warning("failed the operations of an earlier incarnation", count=failed)
        return failed

    async def _watch_reconnects(self) -> None:
        """After our bus connection comes back (a nats-server restart), fail operations
        recorded as ours that no task here runs: their start or their final write may
        have been lost with the server, and nobody else would end them (we are alive)."""
        seen = self.bus.nc.stats["reconnects"] if self.bus.nc else 0
        while True:
            await asyncio.sleep(2.0)
            nc = self.bus.nc
            if nc is None or not nc.is_connected or nc.stats["reconnects"] == seen:
                continue
            try:
                await self._fail_lost()
                seen = nc.stats["reconnects"]
            except Exception as exc:  # the bus is not back for good yet: next round
                log.debug("lost operations not checked", error=str(exc))

    async def _fail_lost(self) -> int:
        mine = (self.owner or {}).get("id")
        failed = 0
        for op_id, rec in (await self.store.items()).items():
            if rec.get("status") in OperationStatus.FINAL or op_id in self._tasks or \
                    (rec.get("owner") or {}).get("id") != mine:
                continue
            if await self._fail(op_id, "The operation was lost when the message bus "
                                "restarted"):
                failed += 1
        return failed

    async def shutdown(self, timeout: float = 20.0) -> None:
        """Cancel what runs here (each undoes its work) and record it failed, with why."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        short = (self.owner or {}).get("service", "corral-?").removeprefix("corral-")
        self._stopping = f"The {short} service stopped before the operation finished"
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def fail_orphans(self) -> int:
        """Fail unfinished operations whose owner is gone (the gateway calls this often).

        An owner is gone when its micro instance has had no responder for ``OWNER_GRACE``
        seconds; an operation without an owner when it is ``UNOWNED_GRACE`` seconds old.
        Returns how many it failed.
        """
        now = time.monotonic()
        failed = 0
        seen = set()
        for op_id, rec in (await self._unfinished()).items():
            seen.add(op_id)
            owner = rec.get("owner")
            if not owner:
                age = time.time() - parse_lxd_time(rec.get("updated_at") or lxd_time())
                if age > UNOWNED_GRACE and await self._fail(
                        op_id, "The process running the operation is gone (it did not "
                        "record its owner)"):
                    failed += 1
                continue
            if await self.owner_alive(owner):
                self._missing.pop(op_id, None)
                continue
            first = self._missing.setdefault(op_id, now)
            if now - first < OWNER_GRACE:
                continue
            short = str(owner.get("service", "")).removeprefix("corral-")
            if await self._fail(op_id, f"The {short} service stopped (its process is gone) "
                                "before the operation finished"):
                failed += 1
            self._missing.pop(op_id, None)
        for op_id in set(self._missing) - seen:
            self._missing.pop(op_id, None)
        return failed

    async def _unfinished(self) -> dict[str, dict[str, Any]]:
        """The unfinished operations, reading only records not seen finished before.

        Why: this runs every 2 s and finished operations stay for the retention (600 s):
        reading every record each round cost a KV round trip per operation (thousands
        after a burst of execs, most of the gateway's CPU). A finished operation never
        changes again (ids are never reused), so it is read once.
        """
        return await self._read_unfinished(await self.store._all_keys())

    async def _read_unfinished(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Of ``keys``, the unfinished operations; the finished ones are remembered with
        their time (only those not remembered yet are read)."""
        live = set(keys)
        for gone in [k for k in self._finished if k not in live]:
            del self._finished[gone]
        todo = [k for k in keys if k not in self._finished]
        found = await asyncio.gather(*(self.store.get(k) for k in todo))
        out: dict[str, dict[str, Any]] = {}
        for op_id, entry in zip(todo, found, strict=True):
            if entry is None:
                continue
            if entry[0].get("status") in OperationStatus.FINAL:
                try:
                    self._finished[op_id] = parse_lxd_time(entry[0]["updated_at"])
                except (KeyError, TypeError, ValueError):
                    self._finished[op_id] = time.time()  # unreadable: kept a retention
            else:
                out[op_id] = entry[0]
        return out

    async def owner_alive(self, owner: dict[str, str]) -> bool:
        """Whether the owner's micro instance answers (unknown counts as alive)."""
        return await presence.alive(self.bus, owner["service"], owner["id"])

    async def _fail(self, op_id: str, reason: str) -> bool:
        """Record an unfinished operation as failed (compare-and-set: if its owner wrote in
        the meantime, leave it for the next round). Returns whether it did."""
        found = await self.store.get(op_id)
        if found is None or found[0].get("status") in OperationStatus.FINAL:
            return False
        rec, rev = found
        rec = {**rec, "err": reason, "updated_at": lxd_time()}
        rec["status"], rec["status_code"] = OperationStatus.FAILURE
        try:
            await self.store.update(op_id, rec, rev)
        except Conflict:
            return False
        except CorralError as exc:
            log.debug("could not fail an operation", op=op_id, error=exc.message)
            return False
        log.warning("operation failed for its owner", op=op_id, reason=reason)
        await self.events.publish("operation", _public(rec), project=rec.get("project",
                                                                             "default"),
                                  entity="operation")
        return True

    # -- running -------------------------------------------------------------------------

    async def start(self, description: str, run: Runner, *, resources: dict[str, list[str]]
                    | None = None, may_cancel: bool = False, cls: str = "task",
                    project: str = "default", metadata: dict[str, Any] | None = None
                    ) -> Operation:
        """Create the operation (Pending, then Running) and run ``run`` in the background."""
        op = Operation(id=str(uuid.uuid4()), **{"class": cls}, description=description,
                       resources=resources, may_cancel=may_cancel, location=self.location,
                       metadata=metadata)
        created = op.lxd()  # the "created" event says Pending, as LXD's
        op.status, op.status_code = OperationStatus.RUNNING
        # The record is written once, already Running (the caller learns the id only when
        # we return): one acknowledged write. Both events are then posted, not awaited
        # (the outbox sends them in order, before any later event of this process, the
        # final one included): the caller's reply does not wait for two more JetStream
        # round trips. The events come after the record, so whoever reads one can GET
        # the operation.
        running = op.lxd()
        try:
            await self.store.create(op.id, self._record(running, project), "Operation")
        except Exception as exc:
            raise bus_error(exc) from exc
        cancel_sub = None
        try:
            if may_cancel:
                cancel_sub = await self.bus.subscribe(subjects.operation_cancel(op.id),
                                                      self._on_cancel)
            self.events.post("operation", created, project=project, entity="operation")
            self.events.post("operation", running, project=project, entity="operation")
        except BaseException as exc:  # no task will end it: end it now (best effort)
            if cancel_sub is not None:
                await _quietly(cancel_sub.unsubscribe())
            await _quietly(self._fail(op.id, f"The operation could not start: {exc}"))
            if isinstance(exc, Exception):
                raise bus_error(exc) from exc
            raise
        handle = OperationHandle(self, op)
        task = asyncio.create_task(self._run(handle, run, project, cancel_sub))
        self._tasks[op.id] = task
        return op.model_copy(deep=True)

    async def _run(self, handle: OperationHandle, run: Runner, project: str,
                   cancel_sub: Any) -> None:
        op = handle.op
        token = operation_id.set(op.id)
        status = OperationStatus.FAILURE
        try:
            result = await run(handle)
            if result:
                op.metadata = {**(op.metadata or {}), **result}
            status = OperationStatus.SUCCESS
        except asyncio.CancelledError:
            if self._stopping:  # the service is stopping, not a user's cancel
                op.err = self._stopping
            else:
                op.err = "Operation cancelled"
                status = OperationStatus.CANCELLED
        except CorralError as exc:
            op.err = exc.message
        except Exception as exc:  # the bus failing under it, or a bug: say so, keep going
            err = bus_error(exc)
            if isinstance(err, CorralError):
                op.err = err.message
            else:
                log.exception("operation failed", description=op.description)
                op.err = f"Internal error: {exc}"
        finally:
            try:
                await self._final(op, status, project)
            finally:
                operation_id.reset(token)
                self._tasks.pop(op.id, None)
                if cancel_sub is not None:
                    await _quietly(cancel_sub.unsubscribe())

    async def _final(self, op: Operation, status: tuple[str, int], project: str,
                     tries: int = 60) -> None:
        """Record the outcome, retrying while the bus is away (a nats-server restart): a
        lost final write would leave the operation Running with its owner alive."""
        for attempt in range(tries):
            try:
                await self._set(op, status, project)
                return
            except Exception as exc:
                if attempt == tries - 1:
                    log.error("could not record an operation's end", op=op.id,
                              error=str(exc))
                    return
                await asyncio.sleep(0.5)

    async def _on_cancel(self, msg: Any) -> None:
        op_id = msg.subject.split(".")[2]
        task = self._tasks.get(op_id)
        if task is None or task.done():
            await msg.respond(codec.encode({"ok": False}))
            return
        task.cancel()
        await msg.respond(codec.encode({"ok": True}))

    async def _set(self, op: Operation, status: tuple[str, int], project: str) -> None:
        op.status, op.status_code = status
        await self._save(op, project)

    async def _save(self, op: Operation, project: str | None = None) -> None:
        op.updated_at = lxd_time()
        if project is None:
            found = await self.store.get(op.id)
            project = found[0].get("project", "default") if found else "default"
        public = op.lxd()  # once for the record and its event (a pydantic dump each)
        await self.store.put(op.id, self._record(public, project))
        await self.events.publish("operation", public, project=project, entity="operation")

    def _record(self, public: dict[str, Any], project: str) -> dict[str, Any]:
        """The stored record: the public operation plus its project and owner."""
        return {**public, "project": project, "owner": self.owner}

    async def wait_local(self, op_id: str) -> None:
        """Wait for an operation this process runs (tests, single-process callers)."""
        task = self._tasks.get(op_id)
        if task:
            await asyncio.shield(task)

    # -- reading (any process, e.g. the gateway) -----------------------------------------

    def remember_final(self, op: dict[str, Any]) -> None:
        """Keep a finished operation as its final event showed it; ``get`` answers from it.

        Why it is exact: the event is published after the record's final write and has
        the same fields as the public record, and a finished record never changes (only
        expiry removes it, which ``get`` checks). A gateway feeds this from the events it
        already receives, so ``lxc exec``'s read of the exit code costs no KV round trip.
        """
        if op.get("status") not in OperationStatus.FINAL or not _valid_id(op.get("id", "")):
            return
        now = time.monotonic()
        seen = self._final_seen
        seen.pop(op["id"], None)  # re-inserted at the end: the dict stays in time order
        seen[op["id"]] = (now, op)
        # Forget what get() would no longer answer from (older than FINAL_SEEN_TTL), not
        # only past the limit: after a burst (the speed bench's 2000 operations) a
        # gateway otherwise kept 4096 finished operations, a few MiB, for nothing.
        while seen:
            first = next(iter(seen))
            if len(seen) <= FINAL_SEEN_LIMIT and now - seen[first][0] < FINAL_SEEN_TTL:
                break
            del seen[first]

    async def get(self, op_id: str) -> dict[str, Any]:
        seen = self._final_seen.get(op_id)
        if seen is not None:
            at, op = seen
            if time.monotonic() - at < FINAL_SEEN_TTL and not is_expired(op, self.retention):
                return dict(op)
            self._final_seen.pop(op_id, None)
        try:
            found = await self.store.get(op_id) if _valid_id(op_id) else None
        except CorralError:
            raise
        except Exception as exc:  # the bus is restarting: a 503, not a 500
            raise bus_error(exc) from exc
        if found is None or is_expired(found[0], self.retention):
            raise NotFound("Operation not found")
        return _public(found[0])

    async def list(self, project: str | None = "default") -> list[dict[str, Any]]:
        """The operations kept (running, or ended within the retention), of ``project``
        (None: every project).

        Why a finished operation is read once: this reads the exact key list, then each
        record, a KV round trip apiece; with the hundreds of operations a busy host keeps
        for the retention (600 s), ``GET /1.0/operations`` and every metrics scrape took
        ~75 ms under load. A finished operation never changes (ids are never reused) and
        one whose key is gone is forgotten, so only running ones are read again.
        """
        now = time.time()
        try:
            keys = await self.store._all_keys()
            live = set(keys)
            for gone in [k for k in self._listed_final if k not in live]:
                del self._listed_final[gone]
            todo = [k for k in keys if k not in self._listed_final]
            found = await asyncio.gather(*(self.store.get(k) for k in todo))
        except CorralError:
            raise
        except Exception as exc:
            raise bus_error(exc) from exc
        ops = [self._listed_final[k] for k in keys if k in self._listed_final]
        for op_id, entry in zip(todo, found, strict=True):
            if entry is None:
                continue
            if entry[0].get("status") in OperationStatus.FINAL:
                self._listed_final[op_id] = entry[0]
            ops.append(entry[0])
        return [_public(o) for o in ops
                if not is_expired(o, self.retention, now)
                and (project is None or o.get("project", "default") == project)]

    async def wait(self, op_id: str, timeout: float) -> dict[str, Any]:
        """Return when the operation is final, or its current state when ``timeout`` passes.

        A waiter outlives a nats-server restart: a watch that breaks is started again (the
        KV keeps the last state, so nothing is missed), until the deadline.
        """
        deadline = None if timeout < 0 else time.monotonic() + max(timeout, 0)
        current = await self._get_patiently(op_id, deadline)
        if current["status"] in OperationStatus.FINAL or timeout == 0:
            return current
        while True:
            try:
                return await self._watch(op_id, current, deadline)
            except NotFound:
                raise
            except Exception as exc:  # the bus went away under the watch: watch again
                log.debug("operation watch broken, watching again", op=op_id, error=str(exc))
            await asyncio.sleep(0.25)
            try:
                current = await self._get_patiently(op_id, deadline)
            except Unavailable:
                return current
            if current["status"] in OperationStatus.FINAL or (
                    deadline is not None and time.monotonic() >= deadline):
                return current

    async def _get_patiently(self, op_id: str, deadline: float | None) -> dict[str, Any]:
        """``get``, retried while the bus is away (until ``deadline``, or 30 s without one);
        then a 503 that says so."""
        limit = time.monotonic() + 30.0 if deadline is None else max(deadline,
                                                                     time.monotonic() + 5)
        while True:
            try:
                return await self.get(op_id)
            except CorralError as exc:
                if not isinstance(exc, Unavailable) or time.monotonic() >= limit:
                    raise
            except Exception as exc:
                if time.monotonic() >= limit:
                    raise bus_error(exc) from exc
            await asyncio.sleep(0.25)

    async def _watch(self, op_id: str, current: dict[str, Any], deadline: float | None
                     ) -> dict[str, Any]:
        watcher = await self.store.kv.watch(op_id, inactive_threshold=WATCH_CONSUMER_IDLE)
        try:
            while True:
                left = 3600.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return current
                try:
                    entry = await watcher.updates(timeout=min(left, 5.0))
                except nats.errors.TimeoutError:
                    # a watch may stall silently across a reconnect: look at the key
                    current = await self.get(op_id)
                    if current["status"] in OperationStatus.FINAL:
                        return current
                    continue
                if entry is None:
                    continue
                if entry.operation in (KV_DEL, KV_PURGE):
                    raise NotFound("Operation not found")
                current = _public(codec.decode(entry.value))
                if current["status"] in OperationStatus.FINAL:
                    return current
        finally:
            try:
                await watcher.stop()
            except Exception:
                pass

    async def cancel(self, op_id: str) -> dict[str, Any]:
        op = await self.get(op_id)
        if op["status"] in OperationStatus.FINAL:
            raise BadRequest(f"Operation is already {op['status'].lower()}, nothing to cancel")
        if not op["may_cancel"]:
            raise Forbidden("This operation can't be cancelled")
        try:
            msg = await self.bus.request_raw(subjects.operation_cancel(op_id), {}, timeout=5,
                                             service="operation owner")
        except Unavailable as exc:
            raise Unavailable(f"The process running operation {op_id} does not answer: "
                              f"{exc.message}") from exc
        if not (codec.decode(msg.data) or {}).get("ok"):
            raise BadRequest("Operation finished before it could be cancelled")
        return await self.wait(op_id, 10)

    async def expire(self) -> int:
        """Delete finished operations older than the retention; returns how many.

        Why not read every record: after a burst (1000 instances made) each gateway read
        each of the thousands of operations every round, a KV round trip apiece, which held
        the event loop that a ``corral-all`` process shares with every service (a cluster
        move made then took seconds). Finished operations are remembered with their time
        (:meth:`_read_unfinished`), so only records not seen finished yet are read.
        """
        now = time.time()
        gone = 0
        try:
            await self._read_unfinished(await self.store._all_keys())
        except jse.Error:
            return 0
        for op_id, updated in list(self._finished.items()):
            if now - updated <= self.retention:
                continue
            self._finished.pop(op_id, None)
            found = await self.store.get(op_id)  # another gateway may have deleted it
            if found is not None and is_expired(found[0], self.retention, now):
                await self.store.delete(op_id)
                gone += 1
        if gone:  # their delete markers would stay in every exact listing otherwise
            await self.store.forget_deleted()
        return gone


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:
        pass


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("project", "owner")}


def _valid_id(op_id: str) -> bool:
    try:
        uuid.UUID(op_id)
    except ValueError:
        return False
    return True
