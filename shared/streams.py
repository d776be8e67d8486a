"""Byte streams between a websocket at the gateway and the service that owns the work.

LXD hands out websockets for exec, console and migration as operation "fds" (name ->
secret). The gateway bridges each websocket to two subjects, the service side uses
:class:`ServiceStreams`:

- ``corral.streams.<op>.<fd>.out``: service -> client (binary data; text frames carry the
  header ``Corral-Text: 1``; an empty message with ``Corral-EOF: 1`` closes the websocket);
- ``corral.streams.<op>.<fd>.in``: client -> service (same framing; EOF when the client
  closes);
- ``corral.streams.<op>.<fd>.attached``: the gateway says a client connected (LXD starts a
  command only once every websocket is connected, so no output is lost).

NATS keeps the order of one publisher's messages, which is all a byte stream needs here.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from .bus import Bus
from .errors import CorralError

PREFIX = "corral.streams"
EOF_HEADER = "Corral-EOF"
TEXT_HEADER = "Corral-Text"


def subject(op_id: str, fd: str, direction: str) -> str:
    return f"{PREFIX}.{op_id}.{fd}.{direction}"


def new_fds(names: list[str]) -> dict[str, str]:
    """LXD's ``fds`` map: fd name -> a secret the client must present."""
    return {name: secrets.token_hex(32) for name in names}


class ServiceStreams:
    """The service's end of an operation's websockets."""

    def __init__(self, bus: Bus, op_id: str, fds: list[str]) -> None:
        self.bus = bus
        self.op_id = op_id
        self.fds = fds
        self.inbox: dict[str, asyncio.Queue[bytes | str | None]] = {
            fd: asyncio.Queue() for fd in fds}
        self._attached: set[str] = set()
        self._changed = asyncio.Event()
        self._subs: list[Any] = []

    async def open(self) -> "ServiceStreams":
        for fd in self.fds:
            self._subs.append(await self.bus.subscribe(subject(self.op_id, fd, "in"),
                                                       self._on_in(fd)))
            self._subs.append(await self.bus.subscribe(subject(self.op_id, fd, "attached"),
                                                       self._on_attached(fd)))
        await self.bus.nc.flush()
        return self

    def _on_in(self, fd: str):
        async def cb(msg: Any) -> None:
            hdrs = msg.headers or {}
            if hdrs.get(EOF_HEADER):
                self.inbox[fd].put_nowait(None)
            elif hdrs.get(TEXT_HEADER):
                self.inbox[fd].put_nowait(msg.data.decode())
            else:
                self.inbox[fd].put_nowait(msg.data)
        return cb

    def _on_attached(self, fd: str):
        async def cb(msg: Any) -> None:
            self._attached.add(fd)
            if msg.reply:
                await msg.respond(b"ok")
            self._changed.set()
        return cb

    def attached(self, fd: str) -> bool:
        return fd in self._attached

    async def wait_attached(self, timeout: float = 60.0, required: list[str] | None = None
                            ) -> None:
        """Wait until the ``required`` fds (default: all) have a client.

        LXD treats the exec ``control`` websocket as optional (pylxd never opens it), so
        exec waits for the data fds only.
        """
        need = set(self.fds if required is None else required)

        async def all_there() -> None:
            while not need <= self._attached:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(all_there(), timeout)
        except asyncio.TimeoutError:
            missing = sorted(need - self._attached)
            raise CorralError(f"Timed out waiting for websockets to connect: {missing}",
                              400) from None

    async def send(self, fd: str, data: bytes) -> None:
        await self.bus.publish(subject(self.op_id, fd, "out"), data)

    async def send_text(self, fd: str, text: str) -> None:
        await self.bus.publish(subject(self.op_id, fd, "out"), text.encode(),
                               headers={TEXT_HEADER: "1"})

    async def eof(self, fd: str) -> None:
        await self.bus.publish(subject(self.op_id, fd, "out"), b"", headers={EOF_HEADER: "1"})

    async def close(self) -> None:
        for fd in self.fds:
            try:
                await self.eof(fd)
            except Exception:
                pass
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()
