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
        self._ended: set[str] = set()  # fds whose EOF was sent
        self._changed = asyncio.Event()
        self._subs: list[Any] = []

    async def open(self) -> "ServiceStreams":
        for fd in self.fds:
            self._subs.append(await self.bus.subscribe(subject(self.op_id, fd, "in"),
                                                       self._on_in(fd)))
            self._subs.append(await self.bus.subscribe(subject(self.op_id, fd, "attached"),
                                                       self._on_attached(fd)))
        # No flush round trip: whoever learns the operation does so from our reply (or a
        # later message) on this same connection, which the server takes after the SUBs.
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
        self._ended.add(fd)

    async def close(self) -> None:
        for fd in self.fds:
            if fd in self._ended:
                continue
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


# ---- downloads made while they are sent (backup exports) ------------------------------------
#
# A service writes a file (a backup tarball) in a worker thread; each chunk goes out on
# ``<stream>.data.out`` as soon as it is made, and the gateway answers every chunk it has
# written to its client with a credit on ``<stream>.data.in``. The producer stays at most
# DOWNLOAD_WINDOW chunks ahead, so a slow client slows the writer down and nothing piles
# up anywhere; an EOF on ``.in`` means the client went away. A failure after the first
# byte is an empty message with DOWNLOAD_ERROR_HEADER, on which the gateway breaks the
# connection off: the client sees a failed download, never a short file that looks whole.

DOWNLOAD_FD = "data"
DOWNLOAD_ERROR_HEADER = "Corral-Error"
DOWNLOAD_WINDOW = 16  # chunks sent ahead of the gateway's credits
DOWNLOAD_CREDIT_TIMEOUT = 120.0  # no credit for this long: the download is gone


_downloads: set[asyncio.Task[None]] = set()


async def start_download(bus: Bus, stream_id: str, write: Any, log: Any, what: str) -> None:
    """Open the stream (before the caller answers the request that asked for it, so no
    credit is missed), then run the blocking ``write(emit)`` in a worker thread as a task
    of this process, sending what it emits with credit-based flow control (see above).
    ``log``/``what`` name a failure in the service's log (a bound structlog logger)."""
    chan = await ServiceStreams(bus, stream_id, [DOWNLOAD_FD]).open()
    task = asyncio.create_task(_produce_download(chan, write, log, what))
    _downloads.add(task)
    task.add_done_callback(_downloads.discard)


async def _produce_download(chan: ServiceStreams, write: Any, log: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    credit = asyncio.Semaphore(DOWNLOAD_WINDOW)
    gone = asyncio.Event()

    async def credits() -> None:
        while True:
            if await chan.inbox[DOWNLOAD_FD].get() is None:  # the client went away
                gone.set()
                return
            credit.release()

    async def send(data: bytes) -> None:
        if gone.is_set():
            raise CorralError("The client stopped the download", 400)
        try:
            await asyncio.wait_for(credit.acquire(), DOWNLOAD_CREDIT_TIMEOUT)
        except asyncio.TimeoutError:
            raise CorralError("The download stalled", 400) from None
        await chan.send(DOWNLOAD_FD, data)

    def emit(data: bytes) -> None:
        asyncio.run_coroutine_threadsafe(send(data), loop).result()

    listener = asyncio.create_task(credits())
    try:
        await asyncio.to_thread(write, emit)
        await chan.eof(DOWNLOAD_FD)
    except BaseException as exc:  # noqa: BLE001 - the gateway must hear of it
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        log.warning(f"{what} failed", error=msg)
        try:
            await chan.bus.publish(subject(chan.op_id, DOWNLOAD_FD, "out"), b"",
                                   headers={DOWNLOAD_ERROR_HEADER: msg[:500]})
        except Exception:
            pass
    finally:
        listener.cancel()
        await chan.close()
