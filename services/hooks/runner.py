"""One hook's delivery loop: a durable JetStream consumer on ``CORRAL_EVENTS``.

Why these consumer settings:

- durable, file-backed, explicit acks: the position survives the hooks service, a
  restart of nats-server and a receiver that is down; an event is acked only after it was
  delivered (or dead-lettered), so it is delivered at least once;
- one batch of up to ``BATCH`` events fetched at a time (``max_ack_pending`` the same),
  delivered one after another, each acked before the next is tried: receivers see the
  stream's order (so, per instance, the order things happened), and the retries of one
  event hold back the ones after it. The events of a batch are kept claimed (an
  ``in_progress`` every few seconds) while an earlier one is retried, so none is handed
  out again behind our back; and a runner that starts while events are still out (its
  process died, or the hook changed, mid-batch) first moves the consumer back to the
  first unacked event (``reset``), so a redelivery is never overtaken by a later event;
- ``ack_wait`` short (10 s): after a crash the unacked events come back within seconds.

After ``retries`` failed attempts (exponential backoff) the event goes to the dead-letter
subject ``corral.hooks.dead.<hook>`` with the error, to the hook's log, and a
``hook-delivery-failed`` event is published; then the next event is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import api

from shared import metrics, subjects
from shared.bus import Bus
from shared.events import Events
from shared.models import lxd_time
from shared.state import Store

from . import actions, credentials, rules

ACK_WAIT = 10.0
BATCH = 64
PULL_EXPIRES = 30.0
HEARTBEAT = 5.0
KEEPALIVE = 3.0
LOG_KEEP = 100
DEAD_LETTER = f"{subjects.PREFIX}.hooks.dead"


def durable_name(hook_name: str) -> str:
    return f"hook-{hook_name}"


def consumer_config(hook: dict[str, Any], start_seq: int | None = None) -> api.ConsumerConfig:
    by_seq = start_seq is not None
    return api.ConsumerConfig(
        durable_name=durable_name(hook["name"]), name=durable_name(hook["name"]),
        description=f"corral hook {hook['name']}",
        filter_subject=rules.filter_subject(hook),
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if by_seq else api.DeliverPolicy.NEW,
        opt_start_seq=start_seq if by_seq else None,
        ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=-1,
        max_ack_pending=BATCH, replay_policy=api.ReplayPolicy.INSTANT,
        num_replicas=0, mem_storage=False)


def event_id(msg: Msg, event: dict[str, Any]) -> str:
    """The event's stable id: its own ``id`` when the publisher gave one, else the
    ``Nats-Msg-Id`` header, else its place in the stream (stable too: a redelivery of the
    same stored message has the same sequence)."""
    if event.get("id"):
        return str(event["id"])
    if msg.headers and msg.headers.get("Nats-Msg-Id"):
        return msg.headers["Nats-Msg-Id"]
    return f"{subjects.EVENTS_STREAM}-{msg.metadata.sequence.stream}"


@dataclass
class Context:
    """What a runner needs from its service, and nothing more."""

    bus: Bus
    events: Events
    logs: Store
    corral_dir: Path
    log: Any
    http: actions.HTTP


class HookLog:
    """The hook's recent deliveries (KV ``hook_logs``), written at most every 0.5 s so a
    busy hook does not pay a KV write per event."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        self.entries: list[dict[str, Any]] = []
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        found = await self.store.get(self.name)
        self.entries = list((found[0] if found else {}).get("entries", []))
        self._task = asyncio.create_task(self._flush_loop())

    def add(self, entry: dict[str, Any]) -> None:
        self.entries = (self.entries + [entry])[-LOG_KEEP:]
        self._dirty.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.5)
            self._dirty.clear()
            with contextlib.suppress(Exception):
                await self.store.put(self.name, {"entries": self.entries})

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._dirty.is_set():
            with contextlib.suppress(Exception):
                await self.store.put(self.name, {"entries": self.entries})


class HookRunner:
    def __init__(self, ctx: Context, hook: dict[str, Any]) -> None:
        self.ctx = ctx
        self.hook = hook
        self.log = HookLog(ctx.logs, hook["name"])
        self.conn = actions.HookConnection(ctx.bus.config.nats_url,
                                           credentials.path(ctx.corral_dir, hook["name"]))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.log.open()
        self._task = asyncio.create_task(self._loop(), name=f"hook-{self.hook['name']}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):  # our last acks reach the server before a
            await self.ctx.bus.nc.flush(timeout=1)  # new runner reads the ack floor
        await self.log.close()
        await self.conn.close()

    async def reset(self) -> None:
        """Events still out (a dead process, a cancelled runner) would come back only
        after ``ack_wait``, and later ones could pass them; a pull request of an earlier
        runner still waiting on the server (for up to ``PULL_EXPIRES``) would take the
        next events to an inbox nobody reads. Either way: move the consumer back to the
        first unacked event (same name, same filter; the ack floor starts where the
        consumer was made, so nothing older comes back)."""
        js, durable = self.ctx.bus.js, durable_name(self.hook["name"])
        info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
        if not info.num_ack_pending and not info.num_waiting:
            return
        start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        await js.delete_consumer(subjects.EVENTS_STREAM, durable)
        await js.add_consumer(subjects.EVENTS_STREAM, consumer_config(self.hook, start))

    async def _loop(self) -> None:
        reset = True
        while True:
            try:
                if reset:
                    await self.reset()
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus went away: the durable consumer waits
                self.ctx.log.warning("hook delivery loop", hook=self.hook["name"],
                                     error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)
            reset = True  # what this loop held may be out: start from the ack floor

    async def _consume(self) -> None:
        """Pull ``BATCH`` events per request over our own inbox and deliver them one by
        one as they arrive. Not nats-py's ``fetch``: it returns a batch only when it is
        full or its request expires (seconds for a quiet hook), and one event per fetch
        costs a round trip per event; here the next request goes as soon as the last one
        is answered, and an idle heartbeat tells a live consumer from a lost one."""
        nc = self.ctx.bus.nc
        assert nc is not None
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg)
        subject = (f"$JS.API.CONSUMER.MSG.NEXT.{subjects.EVENTS_STREAM}."
                   f"{durable_name(self.hook['name'])}")
        request = json.dumps({"batch": BATCH, "expires": int(PULL_EXPIRES * 1e9),
                              "idle_heartbeat": int(HEARTBEAT * 1e9)}).encode()
        held: list[Msg] = []
        keepalive = asyncio.create_task(self._keepalive(held))
        try:
            await nc.publish(subject, request, reply=inbox)
            got = 0
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), 2 * HEARTBEAT + 1)
                except asyncio.TimeoutError:
                    raise ConnectionError("the consumer went quiet (no heartbeat)") from None
                status = msg.headers.get("Status") if msg.headers and not msg.data else None
                if status == "100":  # idle heartbeat: the consumer is alive
                    continue
                if status is not None and status not in ("408", "404"):
                    # 409: consumer deleted, leadership change...: start again from the floor
                    raise ConnectionError(f"consumer: {status} "
                                          f"{msg.headers.get('Description', '')}")
                if status is None:
                    got += 1
                    held.append(msg)
                    await self.handle(msg)
                    held.remove(msg)
                if status is not None or got >= BATCH:  # this request is done: the next
                    got = 0
                    await nc.publish(subject, request, reply=inbox)
        finally:
            keepalive.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            await msg.ack()
            return
        if isinstance(event, dict) and rules.matches(self.hook, event):
            await self.deliver(msg.data, event, event_id(msg, event))
        await msg.ack()

    async def _keepalive(self, out: list[Msg]) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            for msg in list(out):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def attempt(self, body: bytes, event: dict[str, Any], eid: str, n: int) -> str:
        kind = rules.kind(self.hook)
        if kind == "webhook":
            return await actions.webhook(self.ctx.http, self.hook, body, eid, n)
        if kind == "publish":
            return await actions.publish(self.conn, self.hook, body, eid, n)
        return await actions.run(self.conn, self.hook, event, eid, n)

    async def deliver(self, body: bytes, event: dict[str, Any], eid: str,
                      retries: int | None = None,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                      dead_letter: bool = True) -> dict[str, Any]:
        """Deliver with retries; returns (and logs) what happened."""
        retries = self.hook.get("retries", 8) if retries is None else retries
        started = time.monotonic()
        n, error, result = 0, "", ""
        while True:
            n += 1
            tried, error, permanent = time.monotonic(), "interrupted", False
            try:
                result = await self.attempt(body, event, eid, n)
                error = ""
                break
            except actions.DeliveryError as exc:
                error, permanent = str(exc), exc.permanent
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:  # /1.0/metrics: corral_hook_deliveries_total (shared/metrics.py)
                metrics.hook_delivery(self.hook["name"], rules.kind(self.hook), not error,
                                      time.monotonic() - tried)
            if permanent or n > retries:
                break
            if rules.kind(self.hook) != "webhook":
                await self.conn.close()  # reconnect afresh (a credential just reloaded)
            await sleep(rules.backoff(n))
        meta = event.get("metadata") or {}
        entry = {"time": lxd_time(), "event_id": eid, "type": event.get("type", ""),
                 "action": meta.get("action", ""), "source": meta.get("source", ""),
                 "attempts": n, "status": "failed" if error else "delivered",
                 "result": result, "error": error,
                 "duration_ms": round((time.monotonic() - started) * 1000, 1)}
        self.log.add(entry)
        if error and dead_letter:
            await self.dead_letter(body, eid, error, n)
        return entry

    async def dead_letter(self, body: bytes, eid: str, error: str, attempts: int) -> None:
        name = self.hook["name"]
        self.ctx.log.warning("hook delivery failed", hook=name, event_id=eid, error=error)
        metrics.hook_dead_letter(name, rules.kind(self.hook))
        with contextlib.suppress(Exception):
            await self.ctx.bus.publish(f"{DEAD_LETTER}.{subjects.token(name)}", body, headers={
                rules.EVENT_ID_HEADER: eid, rules.HOOK_HEADER: name,
                "X-Corral-Error": error[:1000], rules.ATTEMPT_HEADER: str(attempts)})
        with contextlib.suppress(Exception):
            await self.ctx.events.lifecycle(
                "hook-delivery-failed", f"/1.0/hooks/{name}",
                context={"event_id": eid, "error": error, "attempts": attempts})
