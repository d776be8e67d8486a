"""The VM driver's door to the in-guest agent (``org.corral.agent`` virtio-serial channel).

Why check libvirt first: QEMU owns the channel's unix socket, so a connect succeeds even
when nothing runs in the guest. libvirt tracks whether the guest has the port open
(``<target state='connected'/>`` in the live XML), which answers "is the agent up?"
without touching the socket, so callers fail fast with 503.

Why a loop thread: the driver API blocks and hands out plain fds, while the agent client
(``qemu_agent_client.py``) is asyncio and must be ONE connection per VM
(QEMU serves the socket to one client at a time). So one private event loop thread owns
every client; exec streams are pumped between it and os fds by small threads.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable

from . import qemu_xml
from .base import ExecProcess
from .qemu_agent_client import NOT_RUNNING, AgentClient, AgentExec

AGENT_DOWN = NOT_RUNNING
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_clients: dict[str, AgentClient] = {}


def _run(coro, timeout: float | None = 60):
    """Run a coroutine on the agent loop thread and block for its result."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="corral-vm-agent",
                             daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result(timeout)


async def _client(path: str) -> AgentClient:
    cl = _clients.get(path)
    if cl is None or not cl.connected:
        if cl is not None:
            await cl.close()
        cl = _clients[path] = await AgentClient.connect(path, timeout=2.0)
    return cl


def forget(path: str) -> None:
    """Drop the cached connection of a VM that stopped; the next call reconnects."""
    cl = _clients.pop(path, None)
    if cl is not None and _loop is not None:
        _run(cl.close(), 5)


def drop(path: str) -> None:
    """As ``forget`` without waiting (from libvirt's event thread, when the guest closed
    the agent port): the next call connects anew and says hello to the new agent."""
    with _lock:
        loop = _loop
    if loop is None:
        return

    def go() -> None:
        cl = _clients.pop(path, None)
        if cl is not None:
            asyncio.ensure_future(cl.close())
    loop.call_soon_threadsafe(go)


@dataclass
class AgentLink:
    name: str
    socket_path: str

    @classmethod
    def for_domain(cls, name: str, dom: libvirt.virDomain, socket_path: str,
                   running: bool = False) -> "AgentLink":
        """The link when the guest's agent has the port open, else Unavailable at once.

        ``running``: the caller has just seen the domain running (the exec endpoint
        checks the status first), so only the channel is asked about; the run state is
        asked only to word a refusal."""
        if running and qemu_xml.channel_state(dom.XMLDesc(0)) == "connected":
            return cls(name, socket_path)
        # One state() answers both (a stopped domain is SHUTOFF): each libvirt call is a
        # round trip to libvirtd, 2-4 ms on a busy host, and exec pays them all.
        state = dom.state()[0]
        if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED,
                     libvirt.VIR_DOMAIN_NOSTATE):
            raise Conflict(f"Instance {name!r} is stopped; start it first")
        if state != libvirt.VIR_DOMAIN_RUNNING:
            raise Conflict(f"Instance {name!r} is frozen; unfreeze it first")
        if qemu_xml.channel_state(dom.XMLDesc(0)) != "connected":
            raise Unavailable(AGENT_DOWN)
        return cls(name, socket_path)

    def _call(self, fn, *args, **kw):
        async def go():
            return await fn(await _client(self.socket_path), *args, **kw)
        return _run(go())

    def state(self, timeout: float | None = None) -> dict:
        """The guest's state; Unavailable when the agent takes longer than ``timeout``."""
        async def go():
            return await (await _client(self.socket_path)).state()
        try:
            return _run(asyncio.wait_for(go(), timeout))
        except TimeoutError:
            raise Unavailable(f"VM agent of {self.name!r} did not answer within "
                              f"{timeout} s") from None

    def exec_start(self, command: list[str], env: dict[str, str], cwd: str | None, uid: int,
                   gid: int, interactive: bool, width: int, height: int) -> ExecProcess:
        full = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root" if uid == 0 else "/", "LANG": "C.UTF-8",
                **({"TERM": "xterm"} if interactive else {}), **env}
        # Not waiting for the agent's answer: the guest forks while we set up the streams
        # (a refusal comes out of wait(), inside the exec operation as before).
        proc = self._call(AgentClient.exec, command, full, cwd or "", uid, gid, interactive,
                          width, height, wait_started=False)
        return _Exec(proc, interactive)

    def file_get(self, path: str) -> tuple[bytes | list[str], int, int, int, str]:
        f = self._call(AgentClient.file_get, path)
        return f.content, f.uid, f.gid, f.mode, f.type

    def file_put(self, path: str, data: bytes, uid: int, gid: int, mode: int | None,
                 type_: str, write: str, modify: frozenset[str] = frozenset()) -> None:
        if write not in ("overwrite", "append"):
            raise BadRequest(f"Invalid write mode {write!r}: use overwrite or append")
        # LXD 5.0: a pushed-over file keeps its owner and mode (the stock client sends the
        # local file's on every push) but what ``modify`` names; the agent keeps what it
        # is not given.
        keep = (frozenset({"uid", "gid", "mode"}) - modify
                if type_ == "file" and self._exists(path) else frozenset())
        self._call(AgentClient.file_put, path, data,
                   mode=None if "mode" in keep else mode,
                   uid=None if "uid" in keep else uid, gid=None if "gid" in keep else gid,
                   type=type_, append=write == "append")

    def _exists(self, path: str) -> bool:
        """Whether ``path`` exists in the guest. The agent has no stat: this reads the old
        file once, which a push is about to rewrite anyway."""
        try:
            self._call(AgentClient.file_get, path)
        except NotFound:
            return False
        return True

    def file_delete(self, path: str) -> None:
        self._call(AgentClient.file_delete, path)


class _Exec(ExecProcess):
    """An agent exec seen through fds: pipes, or one socket end standing in for a pty.

    Why on the agent loop: the streams are pumped between the agent client and the fds by
    tasks of the loop that owns the client (non-blocking fds), not by a thread per stream
    hopping to that loop for every read; the exit code reaches the caller through
    ``on_exit`` (no thread blocked in ``wait``). Together that was three threads started
    and a dozen cross-thread hops per exec.
    """

    def __init__(self, proc: AgentExec, interactive: bool) -> None:
        self.proc = proc
        self._code: int | None = None
        self._error: BaseException | None = None
        self._ended = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._cb_lock = threading.Lock()
        if interactive:
            mine, theirs = socket.socketpair()
            self.pty_fd = theirs.detach()
            fd = mine.detach()
            outs, in_fd = [(proc.stdout, os.dup(fd))], fd
        else:
            in_r, self.stdin_fd = os.pipe()
            self.stdout_fd, out_w = os.pipe()
            self.stderr_fd, err_w = os.pipe()
            outs, in_fd = [(proc.stdout, out_w), (proc.stderr, err_w)], in_r
        assert _loop is not None  # the exec itself was started on it
        asyncio.run_coroutine_threadsafe(self._run(outs, in_fd), _loop)

    async def _run(self, outs: list[tuple[asyncio.StreamReader, int]], in_fd: int) -> None:
        feeding = asyncio.ensure_future(_pump_in(self.proc, in_fd))
        try:
            pumps = [asyncio.ensure_future(_pump_out(r, fd)) for r, fd in outs]
            try:
                self._code = await self.proc.wait()
            except BaseException as exc:  # the agent went away: Unavailable to the waiter
                self._error = exc
            await asyncio.gather(*pumps, return_exceptions=True)
            if self.pty_fd is not None:  # as a pty master: EOF once the command ended
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
        finally:
            self._ended.set()
            with self._cb_lock:
                callbacks, self._callbacks = self._callbacks, []
            for cb in callbacks:
                cb()
        if self._error is not None:  # nobody will write stdin to a lost agent
            feeding.cancel()

    @property
    def pid(self) -> int:  # type: ignore[override]
        """The command's pid in the guest; 0 until the agent said it started."""
        return self.proc.pid

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the agent loop thread) once the command ended and its
        output was written to the fds; ``wait`` then returns at once."""
        with self._cb_lock:
            if not self._ended.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self) -> int:
        self._ended.wait()
        if self._error is not None:
            raise self._error
        assert self._code is not None
        return self._code

    def signal(self, signum: int) -> None:
        _run(self.proc.signal(signum))

    def resize(self, width: int, height: int) -> None:
        _run(self.proc.resize(width, height))


async def _wait_fd(fd: int, write: bool) -> None:
    """Until ``fd`` is readable (or writable): the loop's selector watches it meanwhile."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = ((loop.add_writer, loop.remove_writer) if write
                   else (loop.add_reader, loop.remove_reader))
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)


async def _pump_out(reader: asyncio.StreamReader, fd: int) -> None:
    """The command's output from the agent into ``fd`` (closed at the end: EOF)."""
    try:
        os.set_blocking(fd, False)
        while data := await reader.read(65536):
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    await _wait_fd(fd, write=True)
    except (OSError, CorralError):
        pass  # the reader went away: the rest of the output has nowhere to go
    finally:
        os.close(fd)


async def _pump_in(proc: AgentExec, fd: int) -> None:
    """The caller's input from ``fd`` to the command's stdin; EOF closes it."""
    try:
        os.set_blocking(fd, False)
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                await _wait_fd(fd, write=False)
                continue
            if not data:
                break
            await proc.write_stdin(data)
        await proc.close_stdin()
    except (OSError, CorralError):
        pass
    finally:
        os.close(fd)
