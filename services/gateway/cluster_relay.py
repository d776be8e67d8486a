"""The two ends of a move between cluster members, joined over the bus by the gateway.

Why a relay: a migration's ends talk LXD's protocol over websockets (``control``, ``fs``),
which reach a migration service as bus subjects (shared/streams.py: ``<op>.<fd>.in`` into
the service, ``.out`` out of it). Between two members there is no client to dial either
end, and the members' HTTPS addresses need not be reachable (the nodes of
``tests/cluster_stack.py`` listen on none): the gateway, already allowed on both sides of
every stream, attaches to the source's operation (pull mode) and to the target's (push
mode) and forwards each message with its headers (data, barriers, EOF) to the other side.
No certificate, no address, the same framing a websocket's bridge uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from shared import streams
from shared.bus import Bus
from shared.log import get_logger

log = get_logger()
FDS = ("control", "fs")
ATTACH_TIMEOUT = 5.0
Progress = Callable[[int], Awaitable[None]]


class Relay:
    """Forward ``source`` operation's streams to ``target``'s and back; ``moved`` counts the
    bytes of ``fs`` from the source (the operation's progress)."""

    def __init__(self, bus: Bus, source: str, target: str,
                 progress: Progress | None = None) -> None:
        self.bus, self.source, self.target = bus, source, target
        self.progress = progress
        self.moved = 0
        self._last = 0.0
        self._subs: list[Any] = []
        self._writing: asyncio.Task[None] | None = None

    async def open(self) -> "Relay":
        """Subscribe both ways first, then tell both services their websockets are there
        (so nothing either sends once it heard can be missed, as routes/streams.py)."""
        try:
            for fd in FDS:
                self._subs.append(await self.bus.subscribe(
                    streams.subject(self.source, fd, "out"),
                    self._forward(streams.subject(self.target, fd, "in"), fd == "fs")))
                self._subs.append(await self.bus.subscribe(
                    streams.subject(self.target, fd, "out"),
                    self._forward(streams.subject(self.source, fd, "in"), False)))
            for op in (self.source, self.target):
                for fd in FDS:
                    await self.bus.nc.request(streams.subject(op, fd, "attached"), b"",
                                              timeout=ATTACH_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        return self

    def _forward(self, to: str, count: bool) -> Callable[[Any], Awaitable[None]]:
        async def cb(msg: Any) -> None:
            await self.bus.publish(to, msg.data, headers=dict(msg.headers or {}) or None)
            if count and msg.data:
                self.moved += len(msg.data)
                now = time.monotonic()
                if self.progress is not None and now - self._last >= 1.0 and (
                        self._writing is None or self._writing.done()):
                    # written aside: a KV put must not hold up the next bytes (one
                    # subscription's callbacks run one after the other)
                    self._last = now
                    self._writing = asyncio.ensure_future(self._progress(self.moved))
        return cb

    async def _progress(self, moved: int) -> None:
        assert self.progress is not None
        try:
            await self.progress(moved)
        except Exception as exc:  # progress is a nicety: never the transfer
            log.debug("move progress not written", error=str(exc))

    async def hang_up(self) -> None:
        """Both ends see their peer close (EOF on every fd): a side still waiting for data
        fails at once instead of waiting for a peer that died or gave up."""
        for op in (self.source, self.target):
            for fd in FDS:
                try:
                    await self.bus.publish(streams.subject(op, fd, "in"), b"",
                                           headers={streams.EOF_HEADER: "1"})
                except Exception:
                    pass

    async def close(self) -> None:
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()
