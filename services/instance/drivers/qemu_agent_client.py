"""Host-side asyncio client of ``corral-agent`` (the in-guest agent of Corral's VMs).

Why: the VM driver reaches exec/files/state of a guest only through the virtio-serial
channel libvirt exposes as a unix socket. QEMU serves that socket to ONE client at a time
(later connections wait unanswered), so keep one :class:`AgentClient` per VM and share it:
it multiplexes any number of concurrent execs and file transfers over channels.

Every wait is bounded: if the agent is not up (guest still booting, agent dead, VM
stopped) the caller gets ``Unavailable("VM agent isn't currently running")`` quickly,
never a hang. The wire format is described in :mod:`shared.agent.protocol` and ``corral-agent.c``.

    async with await AgentClient.connect("/run/.../agent.sock", timeout=1) as agent:
        proc = await agent.exec(["uname", "-a"])
        out = await proc.stdout.read(); code = await proc.wait()
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.agent import protocol as P
from shared.errors import BadRequest, CorralError, Internal, Unavailable

NOT_RUNNING = "VM agent isn't currently running"


def _unavailable() -> Unavailable:
    return Unavailable(NOT_RUNNING)


def _error(payload: bytes) -> CorralError:
    """An ERROR frame (u32 code + message) as the matching Corral error class."""
    if len(payload) < 4:
        return Internal("VM agent sent a malformed error")
    code = struct.unpack(">I", payload[:4])[0]
    return CorralError.from_code(code, payload[4:].decode(errors="replace"))


@dataclass
class AgentFile:
    """A guest path as ``file_get`` saw it; ``content`` is bytes, entry names, or target."""

    content: bytes | list[str]
    uid: int
    gid: int
    mode: int
    type: str


class _Queue:
    """Frames of one request channel; connection loss arrives as an exception."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[int, bytes] | BaseException] = asyncio.Queue()

    def feed(self, kind: int, payload: bytes) -> None:
        self.q.put_nowait((kind, payload))

    def lost(self, exc: BaseException) -> None:
        self.q.put_nowait(exc)

    async def next(self, timeout: float | None) -> tuple[int, bytes]:
        try:
            item = await asyncio.wait_for(self.q.get(), timeout)
        except asyncio.TimeoutError:
            raise _unavailable() from None
        if isinstance(item, BaseException):
            raise item
        if item[0] == P.R_ERROR:
            raise _error(item[1])
        return item


class AgentExec:
    """A command running in the guest: stream readers, stdin writer, resize, signal, wait."""

    def __init__(self, client: AgentClient, channel: int, interactive: bool) -> None:
        self.client, self.channel, self.interactive = client, channel, interactive
        self.pid = 0
        self.stdout = asyncio.StreamReader(limit=1 << 20)
        self.stderr = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[int] = loop.create_future()
        self._exit: asyncio.Future[int] = loop.create_future()

    def feed(self, kind: int, payload: bytes) -> None:
        if not self._started.done():
            if kind == P.R_OK and len(payload) == 4:
                self._started.set_result(struct.unpack(">I", payload)[0])
            else:  # refused: whoever waits for the start or the exit hears why
                exc = (_error(payload) if kind == P.R_ERROR else
                       Internal(f"VM agent answered exec with {kind:#x}"))
                for fut in (self._started, self._exit):
                    fut.set_exception(exc)
                self._exit.exception()  # a caller waiting for the start only: no warning
                self._finish()
            return
        if kind == P.R_STDOUT:
            self.stdout.feed_data(payload)
        elif kind == P.R_STDERR:
            self.stderr.feed_data(payload)
        elif kind == P.R_EXIT and not self._exit.done():
            self._finish()
            self._exit.set_result(struct.unpack(">i", payload[:4])[0])

    def _set_pid(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.pid = fut.result()

    def lost(self, exc: BaseException) -> None:
        for fut in (self._started, self._exit):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # nobody may be waiting: no "never retrieved" warning
        self._finish()

    def _finish(self) -> None:
        self.stdout.feed_eof()
        self.stderr.feed_eof()
        self.client._chans.pop(self.channel, None)

    async def write_stdin(self, data: bytes) -> None:
        """Send bytes to the command's stdin (or its pty)."""
        for i in range(0, len(data), P.CHUNK):
            await self.client._send(P.STDIN, self.channel, data[i:i + P.CHUNK])

    async def close_stdin(self) -> None:
        """End of input (no-op for a pty: type ``exit`` or send a signal instead)."""
        if not self._exit.done():
            await self.client._send(P.STDIN, self.channel, b"")

    async def resize(self, width: int, height: int) -> None:
        """Set the pty window size (interactive only)."""
        if not self.interactive:
            raise BadRequest("Window size can only be set for an interactive exec")
        if not (0 < width < 65536 and 0 < height < 65536):
            raise BadRequest(f"Invalid terminal size {width}x{height}")
        await self.client._send(P.RESIZE, self.channel, struct.pack(">HH", width, height))

    async def signal(self, signum: int) -> None:
        """Deliver a signal to the command (no-op once it ended)."""
        if not self._exit.done():
            await self.client._send(P.SIGNAL, self.channel, struct.pack(">I", signum))

    async def wait(self, timeout: float | None = None) -> int:
        """Exit code (128+N when killed by signal N); Unavailable if the agent went away."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"Command did not end within {timeout} s") from None


class AgentClient:
    """One connection to one guest agent; see the module docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reply_timeout: float) -> None:
        self._reader, self._writer = reader, writer
        self.reply_timeout = reply_timeout
        self._chans: dict[int, _Queue | AgentExec] = {}
        self._ids = itertools.count(1)
        self._lost: CorralError | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: str | Path, timeout: float = 1.0,
                      reply_timeout: float = 30.0) -> AgentClient:
        """Connect to the channel's unix socket and handshake within ``timeout`` seconds."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=1 << 22), timeout)
        except (OSError, asyncio.TimeoutError):
            raise _unavailable() from None
        return await cls._start(reader, writer, timeout, reply_timeout)

    @classmethod
    async def from_socket(cls, sock: socket.socket, timeout: float = 1.0,
                          reply_timeout: float = 30.0) -> AgentClient:
        """Use an already connected stream socket (a socketpair end in tests)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 22)
        return await cls._start(reader, writer, timeout, reply_timeout)

    @classmethod
    async def _start(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     timeout: float, reply_timeout: float) -> AgentClient:
        self = cls(reader, writer, reply_timeout)
        hello = P.MAGIC + os.urandom(P.NONCE_LEN)
        try:
            writer.write(hello)
            await asyncio.wait_for(self._await_hello(hello), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            writer.close()
            raise _unavailable() from None
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def _await_hello(self, hello: bytes) -> None:
        """Skip stale bytes (an earlier session's output) up to our own MAGIC + nonce."""
        await self._writer.drain()
        await self._reader.readuntil(hello)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the connection; the agent kills the execs this client started."""
        self._fail(_unavailable())
        if self._task:
            self._task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    @property
    def connected(self) -> bool:
        return self._lost is None

    def _fail(self, exc: CorralError) -> None:
        if self._lost is None:
            self._lost = exc
        for handler in list(self._chans.values()):
            handler.lost(exc)
        self._chans.clear()

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(P.HEADER.size)
                size, kind, chan = P.HEADER.unpack(head)
                if size > P.MAX_PAYLOAD:
                    raise Internal(f"VM agent sent a {size}-byte frame: stream out of sync")
                payload = await self._reader.readexactly(size) if size else b""
                handler = self._chans.get(chan)
                if handler is not None:
                    handler.feed(kind, payload)
        except CorralError as e:
            self._fail(e)
        except (OSError, asyncio.IncompleteReadError):
            self._fail(_unavailable())

    async def _send(self, kind: int, chan: int, payload: bytes = b"") -> None:
        if self._lost is not None:
            raise self._lost
        try:
            self._writer.write(P.frame(kind, chan, payload))
            await self._writer.drain()
        except OSError:
            self._fail(_unavailable())
            raise _unavailable() from None

    def _open(self, handler_factory: Callable[[int], _Queue | AgentExec]
              ) -> tuple[int, _Queue | AgentExec]:
        if self._lost is not None:
            raise self._lost
        chan = next(self._ids) & 0xFFFFFFFF
        handler = handler_factory(chan)
        self._chans[chan] = handler
        return chan, handler

    async def _request(self, kind: int, payload: bytes, timeout: float | None) -> bytes:
        chan, q = self._open(lambda c: _Queue())
        assert isinstance(q, _Queue)
        try:
            await self._send(kind, chan, payload)
            return (await q.next(timeout))[1]
        finally:
            self._chans.pop(chan, None)

    # ------------------------------------------------------------------ requests

    async def ping(self, timeout: float = 1.0) -> float:
        """Round trip to the agent in seconds; Unavailable if no answer within timeout."""
        t0 = time.monotonic()
        token = os.urandom(8)
        if await self._request(P.PING, token, timeout) != token:
            raise Internal("VM agent answered ping with the wrong token")
        return time.monotonic() - t0

    async def exec(self, argv: list[str], env: dict[str, str] | None = None, cwd: str = "",
                   uid: int = 0, gid: int = 0, interactive: bool = False, width: int = 80,
                   height: int = 24, wait_started: bool = True) -> AgentExec:
        """Start ``argv`` in the guest; returns once it runs (exit 127: not found).

        ``wait_started=False`` returns as soon as the request is sent (``pid`` stays 0
        until the agent answers): the round trip through the guest overlaps the caller's
        own setup, and a refusal reaches the caller from ``wait`` instead. Input, signals
        and resizes sent meanwhile follow the request on the stream, so the agent sees
        them after it started the command."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("exec needs a command: a non-empty list of strings")
        if not (0 <= uid < P.UNSET and 0 <= gid < P.UNSET):
            raise BadRequest(f"Invalid uid/gid {uid}/{gid}")
        try:
            body = P.exec_payload(argv, dict(env or {}), cwd, uid, gid, interactive,
                                  min(max(width, 1), 65535), min(max(height, 1), 65535))
        except ValueError as e:
            raise BadRequest(f"Invalid exec request: {e}") from None
        if len(body) > P.MAX_PAYLOAD:
            raise BadRequest("exec command line and environment exceed 1 MiB")
        chan, proc = self._open(lambda c: AgentExec(self, c, interactive))
        assert isinstance(proc, AgentExec)
        await self._send(P.EXEC, chan, body)
        if not wait_started:
            proc._started.add_done_callback(proc._set_pid)
            return proc
        try:
            proc.pid = await asyncio.wait_for(asyncio.shield(proc._started), self.reply_timeout)
        except asyncio.TimeoutError:
            self._chans.pop(chan, None)
            raise _unavailable() from None
        return proc

    async def file_get(self, path: str) -> AgentFile:
        """Content and owner/mode of a guest file, directory (names) or symlink (target)."""
        _check_path(path)
        chan, q = self._open(lambda c: _Queue())
        assert isinstance(q, _Queue)
        try:
            await self._send(P.FILE_GET, chan, P.cstr(path))
            kind, head = await q.next(self.reply_timeout)
            if kind != P.R_FINFO or len(head) != P.FINFO.size:
                raise Internal(f"VM agent answered file_get with {kind:#x}")
            mode, uid, gid, ftype, _ = P.FINFO.unpack(head)
            parts = []
            while True:
                kind, data = await q.next(self.reply_timeout)
                if not data:
                    break
                parts.append(data)
        finally:
            self._chans.pop(chan, None)
        raw = b"".join(parts)
        name = P.FILE_TYPE_NAMES.get(ftype, "file")
        content: bytes | list[str] = raw
        if name == "directory":
            content = sorted(n.decode(errors="surrogateescape") for n in raw.split(b"\0") if n)
        return AgentFile(content=content, uid=uid, gid=gid, mode=mode, type=name)

    async def file_put(self, path: str, data: bytes | str = b"", *, mode: int | None = None,
                       uid: int | None = None, gid: int | None = None, type: str = "file",
                       append: bool = False) -> None:
        """Write a file (``data``), make a directory, or a symlink (``data`` = target).

        Unset mode/uid/gid keep an existing file's values (new: 0644/0755, root).
        """
        _check_path(path)
        if type not in P.FILE_TYPES:
            raise BadRequest(f"Unknown file type {type!r}: use file, directory or symlink")
        if mode is not None and not 0 <= mode <= 0o7777:
            raise BadRequest(f"Invalid mode {mode:o}")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            head = P.file_put_payload(path, mode, uid, gid, type, append,
                                      raw.decode(errors="surrogateescape"))
        except ValueError as e:
            raise BadRequest(f"Invalid file request: {e}") from None
        if type == "symlink" and not raw:
            raise BadRequest("A symlink needs a target")
        chan, q = self._open(lambda c: _Queue())
        assert isinstance(q, _Queue)
        try:
            await self._send(P.FILE_PUT, chan, head)
            if type == "file":
                for i in range(0, len(raw), P.CHUNK):
                    if not q.q.empty():  # refused early (e.g. missing parent directory)
                        break
                    await self._send(P.DATA, chan, raw[i:i + P.CHUNK])
                await self._send(P.DATA, chan, b"")
            await q.next(self.reply_timeout)
        finally:
            self._chans.pop(chan, None)

    async def file_delete(self, path: str) -> None:
        """Remove a file, symlink or empty directory in the guest."""
        _check_path(path)
        await self._request(P.FILE_DEL, P.cstr(path), self.reply_timeout)

    async def state(self) -> dict:
        """Memory, processes, uptime, hostname and network of the guest (LXD-like shape)."""
        return parse_state(await self._request(P.STATE, b"", self.reply_timeout))


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadRequest(f"Invalid guest path {path!r}: it must be absolute")


def parse_state(text: bytes) -> dict:
    """Turn the agent's line format into LXD's state fields (memory in bytes)."""
    out: dict = {"hostname": "", "uptime": 0.0, "processes": 0,
                 "memory": {"total": 0, "free": 0, "available": 0, "usage": 0},
                 "network": {}}
    net: dict[str, dict] = out["network"]
    for line in text.decode(errors="replace").splitlines():
        key, *f = line.split()
        if key == "hostname" and f:
            out["hostname"] = f[0]
        elif key == "uptime" and f:
            out["uptime"] = float(f[0])
        elif key == "processes" and f:
            out["processes"] = int(f[0])
        elif key == "memory" and len(f) == 3:
            total, free, avail = (int(x) * 1024 for x in f)
            out["memory"] = {"total": total, "free": free, "available": avail,
                             "usage": total - (avail or free)}
        elif key == "iface" and len(f) == 9:
            name, st, mtu, hw, rxb, rxp, txb, txp, typ = f
            net[name] = {"addresses": [], "hwaddr": "" if hw == "-" else hw, "mtu": int(mtu),
                         "state": st, "type": typ, "host_name": "",
                         "counters": {"bytes_received": int(rxb), "packets_received": int(rxp),
                                      "bytes_sent": int(txb), "packets_sent": int(txp)}}
        elif key == "addr" and len(f) == 5:
            name, fam, addr, prefix, scope = f
            net.setdefault(name, {"addresses": []})["addresses"].append(
                {"family": fam, "address": addr, "netmask": prefix, "scope": scope})
    return out


__all__ = ["AgentClient", "AgentExec", "AgentFile", "NOT_RUNNING", "parse_state"]
