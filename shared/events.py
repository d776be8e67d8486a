"""Events: LXD's JSON on ``corral.events.<type>.<project>.<entity>``, kept in a stream.

Events are JSON (not msgpack) because they are LXD's event objects, passed through to
``/1.0/events`` websockets byte for byte and readable by any NATS tool. The
``CORRAL_EVENTS`` stream keeps them (age and size limits from config) so a consumer that
was away can replay what it missed; plain subscribers see them live.

Events keep their promise: each is published into the stream with JetStream's
acknowledgement, and one the server did not acknowledge (nats-server down or restarting)
waits in this process's outbox and is sent again, in order, once the bus is back.

Every event has a stable id, carried in the ``Nats-Msg-Id`` header (:data:`ID_HEADER`),
not in the JSON: the frame stays exactly LXD's (stock clients and pylxd see what LXD
sends), and JetStream drops a second copy of the same id within its duplicate window, so
a resend after a lost acknowledgement is stored once. Consumers read the id from the
header (``shared.client`` exposes it as ``Event.id``) to drop duplicates of an
at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import weakref
from collections import deque
from typing import Any

import nats.js.errors as jse
from nats.errors import Error as NatsError
from nats.js import api

from . import subjects
from .bus import Bus
from .log import get_logger
from .models import Event, Requestor

ID_HEADER = "Nats-Msg-Id"
# Events a process keeps while the server does not acknowledge them; past this the oldest
# go (a bounded memory beats a service that dies of a long outage).
OUTBOX_LIMIT = 10_000
# How long one acknowledgement may take before the event waits in the outbox instead.
ACK_TIMEOUT = 2.0

log = get_logger(component="events")


async def ensure_stream(bus: Bus) -> api.StreamInfo:
    cfg = api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Corral events (LXD's lifecycle, operation and logging events)",
        subjects=[subjects.EVENTS_ALL],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=bus.config.events_max_age,
        max_bytes=bus.config.events_max_bytes,
        num_replicas=bus.config.kv_replicas,
    )
    try:
        await bus.js.stream_info(subjects.EVENTS_STREAM)
        return await bus.js.update_stream(cfg)
    except jse.NotFoundError:
        return await bus.js.add_stream(cfg)


class Outbox:
    """One process's events on their way into the stream, in the order they happened.

    While nothing waits, an event goes straight to the stream and its acknowledgement is
    awaited. Once one fails, it and every later event queue here (so order holds) and a
    single task resends them, oldest first, until the server acknowledges each. An event
    sent while another is on its way, or posted (:meth:`post`), queues the same way: the
    order is the order of the calls.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pending: deque[tuple[str, bytes, str]] = deque()
        self.dropped = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    def post(self, subject: str, data: bytes, event_id: str) -> None:
        """Queue an event behind every earlier one and return without waiting for its
        acknowledgement (the flusher sends it, in order).

        Why: a request that only has to *announce* something (an operation created,
        an exec begun) need not hold its reply for a JetStream round trip per event.
        Order still holds: anything sent later, by ``send`` or ``post``, queues behind
        it while it waits here.
        """
        self._queue(subject, data, event_id)

    async def send(self, subject: str, data: bytes, event_id: str) -> None:
        """Publish and wait for the acknowledgement when nothing else is on its way;
        otherwise queue behind what is (and return): each event takes its place in the
        order when it is sent, never while it waits for the lock."""
        if not self.pending and not self._lock.locked() and self._connected():
            async with self._lock:  # free: taken at once, nothing comes in between
                try:
                    await self._publish(subject, data, event_id)
                    return
                except (NatsError, jse.Error, asyncio.TimeoutError, OSError):
                    # whatever was sent or posted meanwhile came after this one
                    self._queue(subject, data, event_id, first=True)
                    return
        self._queue(subject, data, event_id)

    def _connected(self) -> bool:
        nc = self.bus.nc
        return nc is not None and nc.is_connected

    async def _publish(self, subject: str, data: bytes, event_id: str) -> None:
        await self.bus.js.publish(subject, data, timeout=ACK_TIMEOUT,
                                  headers={ID_HEADER: event_id})

    def _queue(self, subject: str, data: bytes, event_id: str, first: bool = False) -> None:
        if len(self.pending) >= OUTBOX_LIMIT:
            self.pending.popleft()
            self.dropped += 1
        if first:
            self.pending.appendleft((subject, data, event_id))
        else:
            self.pending.append((subject, data, event_id))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        delay = 0.1
        while self.pending:
            nc = self.bus.nc
            if nc is None or nc.is_closed:
                return  # the process is stopping: nothing will carry them any more
            if not nc.is_connected:
                await asyncio.sleep(0.1)
                continue
            subject, data, event_id = self.pending[0]
            try:
                async with self._lock:
                    await self._publish(subject, data, event_id)
            except (NatsError, jse.Error, asyncio.TimeoutError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self.pending.popleft()
        if self.dropped:
            log.warning("events dropped: the outbox was full while nats-server was away",
                        dropped=self.dropped)
            self.dropped = 0

    async def drain(self, timeout: float = 5.0) -> int:
        """Wait (at most ``timeout``) for the queued events to go; how many are left.

        Not while the bus is away: a process stopping during a nats-server outage should
        not linger for events it cannot send."""
        if self._flusher is not None and not self._flusher.done() and self._connected():
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout)
            except asyncio.TimeoutError:
                pass
        return len(self.pending)


_outboxes: "weakref.WeakKeyDictionary[Bus, Outbox]" = weakref.WeakKeyDictionary()


def outbox(bus: Bus) -> Outbox:
    """The outbox of ``bus``'s process (one per connection, shared by every Events)."""
    box = _outboxes.get(bus)
    if box is None:
        box = _outboxes[bus] = Outbox(bus)
    return box


def new_id() -> str:
    return str(uuid.uuid4())


class Events:
    def __init__(self, bus: Bus, location: str = "none") -> None:
        self.bus = bus
        self.location = location

    async def publish(self, type_: str, metadata: dict[str, Any], *, project: str = "default",
                      entity: str = "server") -> Event:
        event, subject, data = self._make(type_, metadata, project, entity)
        await outbox(self.bus).send(subject, data, new_id())
        return event

    def post(self, type_: str, metadata: dict[str, Any], *, project: str = "default",
             entity: str = "server") -> Event:
        """:meth:`publish` without waiting for the acknowledgement (see ``Outbox.post``):
        the event is on its way, after every event this process published before it."""
        event, subject, data = self._make(type_, metadata, project, entity)
        outbox(self.bus).post(subject, data, new_id())
        return event

    def _make(self, type_: str, metadata: dict[str, Any], project: str, entity: str
              ) -> tuple[Event, str, bytes]:
        event = Event(type=type_, metadata=metadata, project=project, location=self.location)
        data = json.dumps(event.model_dump(), separators=(",", ":")).encode()
        return event, subjects.event(type_, project, entity), data

    async def drain(self, timeout: float = 5.0) -> int:
        """Before the bus closes: let events still in the outbox go; how many are left."""
        return await outbox(self.bus).drain(timeout)

    async def lifecycle(self, action: str, source: str, *, project: str = "default",
                        context: dict[str, Any] | None = None,
                        requestor: Requestor | None = None) -> Event:
        """``instance-started`` and friends; the entity is the part before the first dash."""
        meta, entity = _lifecycle(action, source, context, requestor)
        return await self.publish("lifecycle", meta, project=project, entity=entity)

    def post_lifecycle(self, action: str, source: str, *, project: str = "default",
                       context: dict[str, Any] | None = None,
                       requestor: Requestor | None = None) -> Event:
        """:meth:`lifecycle` without waiting for the acknowledgement (see :meth:`post`)."""
        meta, entity = _lifecycle(action, source, context, requestor)
        return self.post("lifecycle", meta, project=project, entity=entity)

    async def logging(self, message: str, level: str, context: dict[str, Any],
                      service: str) -> Event:
        meta = {"message": message, "level": level, "context": context}
        return await self.publish("logging", meta, entity=service)


def _lifecycle(action: str, source: str, context: dict[str, Any] | None,
               requestor: Requestor | None) -> tuple[dict[str, Any], str]:
    """A lifecycle event's metadata and entity (the part of ``action`` before its last
    dash)."""
    meta: dict[str, Any] = {"action": action, "source": source}
    if context:
        meta["context"] = context
    if requestor:
        meta["requestor"] = requestor.model_dump()
    return meta, action.rsplit("-", 1)[0]
