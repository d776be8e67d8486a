"""Exec in an instance, LXD's ``POST /1.0/instances/<name>/exec``, as a service mixin.

:class:`ExecFilesConsoleMixin` is what the instance service inherits: exec here, files
and console/logs in their own mixins. The endpoints rely only on ``self.driver_of``
(the instance's driver), ``self.require_instance``, ``self.instance_status`` and the
service base; they read the driver's capability flags before offering a feature.

With ``wait-for-websocket`` the command starts only once every websocket is connected
(no output lost); its fds are pumped to and from the websockets (bridged over the bus by
the gateway) without threads, and the operation turns Success only after all output was
sent and the streams were closed. Without websockets the command runs to the end with
stdin empty and its output recorded to log files (``record-output``) or discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import streams
from shared.api import string_map, url
from shared.config import env_seconds
from shared.errors import BadRequest
from shared.log import get_logger
from shared.messages.exec import ExecRequest
from shared.models import Reply
from shared.service import endpoint

from .console_api import ConsoleMixin, log_dir
from .console_attach import ConsoleAttachMixin
from .drivers import lxc_exec
from .drivers.base import ExecProcess, InstanceDriver
from .files_api import FilesMixin
from .names import host_name, host_of
from .pumps import Sink, pump_in, pump_out

log = get_logger()
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Seconds the client has to connect every websocket (CORRAL_WS_TIMEOUT: the test stack
# waits out a client that never comes in less).
WS_TIMEOUT = env_seconds("CORRAL_WS_TIMEOUT", 30.0, 1.0)
# The API extensions these mixins implement (the service adds them to GET /1.0).
API_EXTENSIONS = ["container_exec_recording", "container_exec_user_group_cwd",
                  "container_exec_signal_handling", "exec_control_sigterm", "console",
                  "file_delete", "file_append", "file_symlinks", "directory_manipulation"]


class ExecPost(BaseModel):
    """LXD's InstanceExecPost."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    command: list[str]
    environment: dict[str, Any] | None = None
    interactive: bool = False
    wait_for_websocket: bool = Field(False, alias="wait-for-websocket")
    record_output: bool = Field(False, alias="record-output")
    width: int = 0
    height: int = 0
    user: int = 0
    group: int = 0
    cwd: str = ""

    @field_validator("width", "height", "user", "group", "cwd", "environment", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        """JSON null means "not given", as Go's decoder reads it (pylxd sends nulls)."""
        if value is None:
            return {"cwd": "", "environment": None}.get(info.field_name, 0)
        return value


def parse_post(body: dict[str, Any]) -> ExecPost:
    try:
        post = ExecPost.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"Invalid exec request: {'.'.join(map(str, first['loc']))}: "
                         f"{first['msg']}") from None
    if not post.command or any(not a or "\0" in a for a in post.command[:1]):
        raise BadRequest("Invalid exec request: command must be a non-empty list of strings")
    if post.user < 0 or post.group < 0:
        raise BadRequest("Invalid exec request: user and group must be ids >= 0")
    return post


def exec_environment(expanded_config: dict[str, str], post: ExecPost) -> dict[str, str]:
    """LXD's order: the request, then ``environment.*`` of the instance, then defaults."""
    env = string_map("environment", post.environment)
    for key, value in expanded_config.items():
        if key.startswith("environment."):
            env.setdefault(key[len("environment."):], value)
    env.setdefault("PATH", DEFAULT_PATH)
    if post.user == 0:
        env.setdefault("HOME", "/root")
        env.setdefault("USER", "root")
    env.setdefault("LANG", "C.UTF-8")
    return env
async def pump_control(inbox: asyncio.Queue[Any], proc: Any, interactive: bool,
                       exited: asyncio.Event) -> None:
    """LXD's control messages: window-resize (pty only) and signal.

    Like LXD, a control websocket closed while the command still runs means the client
    went away: the command is killed rather than left running unattended.
    """
    while (item := await inbox.get()) is not None:
        try:
            msg = json.loads(item)
            if msg.get("command") == "window-resize" and interactive:
                args = msg.get("args") or {}
                proc.resize(int(args["width"]), int(args["height"]))
            elif msg.get("command") == "signal":
                proc.signal(int(msg["signal"]))
        except Exception:  # a bad message is ignored, as LXD does
            continue
    if not exited.is_set():
        proc.signal(signal.SIGKILL)


def file_sink(path: Any) -> tuple[Sink, Callable[[], None]]:
    """A sink appending to a file, and its closer."""
    fh = open(path, "wb")

    async def write(data: bytes) -> None:
        fh.write(data)

    return write, fh.close


async def discard(_data: bytes) -> None:
    return None


# -- the mixin --------------------------------------------------------------------------

class ExecMixin:
    """``exec``: start a command in a running instance (see the module docstring)."""

    @endpoint("exec", ExecRequest)
    async def exec_instance(self, req: ExecRequest) -> Reply:
        post = parse_post(req.body)
        inst = await self.require_instance(req.project, req.name)
        drv = self.driver_of(inst)
        if not drv.capabilities.exec:
            raise BadRequest(f"exec is not supported for a {inst['type']}")
        if post.interactive and not drv.capabilities.exec_pty:
            raise BadRequest(f"Interactive exec (a pty) is not supported for a "
                             f"{inst['type']}: run it with interactive=false")
        # VMs: the agent's check (503 while it is down; a libvirt round trip) runs beside
        # the status check (another), not after it; the status still speaks first.
        ready = (asyncio.ensure_future(asyncio.to_thread(drv.exec_ready, host_of(inst)))
                 if type(drv).exec_ready is not InstanceDriver.exec_ready else None)
        try:
            status = await self.instance_status(inst)
            if status == "Frozen":
                raise BadRequest("Instance is frozen")
            if status != "Running":
                raise BadRequest("Instance is not running")
        except BaseException:
            if ready is not None:
                await asyncio.gather(ready, return_exceptions=True)
            raise
        if ready is not None:
            await ready
        env = exec_environment(inst.get("expanded_config") or {}, post)
        source = url("instances", req.name, req.project)
        resources = {"instances": [source]}
        if inst.get("type", "container") == "container":
            resources["containers"] = [source]
        # The slow part of starting, the attach (in its helper process), begins now,
        # beside the lifecycle event, the operation's record and the client connecting
        # its websockets; LXC holds the command before exec until the operation runs it
        # (with websockets: once they are all connected, as LXD starts it).
        early = (_Early(asyncio.ensure_future(self._start(
            drv, host_name(req.project, req.name), post, env, hold=True)))
            if inst.get("type", "container") == "container" else None)
        # The lifecycle event is posted, not awaited: the outbox sends it before the
        # operation's events (queued after it), and the reply does not wait for its
        # JetStream acknowledgement.
        self.events.post_lifecycle("instance-exec", source, project=req.project,
                                   context={"command": post.command},
                                   requestor=req.requestor)
        if post.wait_for_websocket:
            return await self._exec_with_websockets(drv, req, post, env, resources, early)
        out_dir = log_dir(self.config, req.project, req.name)

        async def run(handle: Any) -> dict[str, Any]:
            return await self._exec_recorded(drv, handle.id, req, post, env, out_dir,
                                             early)

        try:
            op = await self.operations.start("Executing command", run,
                                             resources=resources, project=req.project)
        except BaseException:
            await _abandon_unless_taken(early)
            raise
        return Reply(type="async", operation=op.lxd())

    async def _exec_with_websockets(self, drv: InstanceDriver, req: ExecRequest,
                                    post: ExecPost,
                                    env: dict[str, str], resources: dict[str, list[str]],
                                    early: _Early | None) -> Reply:
        names = ["0", "control"] if post.interactive else ["0", "1", "2", "control"]
        fds = streams.new_fds(names)
        meta = {"fds": fds, "command": post.command, "environment": env,
                "interactive": post.interactive}
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run(handle: Any) -> dict[str, Any]:
            starting = early.take() if early is not None else None
            ss = streams.ServiceStreams(self.bus, handle.id, names)
            try:
                try:
                    await ss.open()
                except BaseException as exc:
                    ready.set_exception(exc)
                    raise
                ready.set_result(None)
                # control is optional, as in LXD (pylxd never opens it)
                await ss.wait_attached(WS_TIMEOUT, [n for n in names if n != "control"])
                starting = starting or asyncio.ensure_future(
                    self._start(drv, host_name(req.project, req.name), post, env))
                proc = await asyncio.shield(starting)
            except BaseException:
                if starting is not None:
                    await _abandon(starting)
                raise
            try:
                return await self._exec_streams(ss, proc, post)
            finally:
                await ss.close()

        try:
            op = await self.operations.start("Executing command", run, resources=resources,
                                             cls="websocket", project=req.project,
                                             metadata=meta)
        except BaseException:
            await _abandon_unless_taken(early)
            raise
        await ready  # the streams listen before the client can learn the secrets
        return Reply(type="async", operation=op.lxd())

    async def _start(self, drv: InstanceDriver, name: str, post: ExecPost,
                     env: dict[str, str], hold: bool = False) -> ExecProcess:
        def start() -> ExecProcess:
            with lxc_exec.holding() if hold else contextlib.nullcontext():
                proc = drv.exec_start(name, post.command, env, post.cwd or None, post.user,
                                      post.group, post.interactive, post.width or 80,
                                      post.height or 24)
            if hold and not hasattr(proc, "release"):  # a driver that cannot hold
                log.warning("exec started before its websockets connected", instance=name)
            return proc

        return await asyncio.to_thread(start)

    async def _exec_streams(self, ss: streams.ServiceStreams, proc: ExecProcess,
                            post: ExecPost) -> dict[str, Any]:
        exited = asyncio.Event()
        if post.interactive:
            outs = [(proc.pty_fd, "0")]
            in_fd = proc.pty_fd
        else:
            outs = [(proc.stdout_fd, "1"), (proc.stderr_fd, "2")]
            in_fd = proc.stdin_fd
        own = {fd for fd in (proc.pty_fd, proc.stdin_fd, proc.stdout_fd, proc.stderr_fd)
               if fd is not None}

        def sink(fd_name: str) -> Sink:
            return lambda data: ss.send(fd_name, data)

        helpers = [asyncio.ensure_future(pump_in(ss.inbox["0"], in_fd,
                                                 None if post.interactive else own)),
                   asyncio.ensure_future(pump_control(ss.inbox["control"], proc,
                                                      post.interactive, exited))]
        pumps: list[asyncio.Future[None]] = []
        try:
            pumps = [asyncio.ensure_future(pump_out(fd, sink(n), exited)) for fd, n in outs]
            _release(proc)
            code = await _wait_exit(proc, exited)
            await asyncio.gather(*pumps)
            # All output sent: now EOF, then (the operation's record) Success. One
            # connection keeps that order on the bus: no flush round trip needed.
            for _fd, fd_name in outs:
                await ss.eof(fd_name)
            return {"return": code}
        finally:
            if not exited.is_set():
                proc.signal(signal.SIGKILL)
            await _cancel(helpers + pumps)
            _close_all(own)

    async def _exec_recorded(self, drv: InstanceDriver, op_id: str, req: ExecRequest,
                             post: ExecPost, env: dict[str, str], out_dir: Path,
                             early: _Early | None) -> dict[str, Any]:
        if early is None:
            proc = await self._start(drv, host_name(req.project, req.name), post, env)
        else:
            starting = early.take()
            try:
                proc = await asyncio.shield(starting)
            except BaseException:
                await _abandon(starting)
                raise
        own = {fd for fd in (proc.pty_fd, proc.stdin_fd, proc.stdout_fd, proc.stderr_fd)
               if fd is not None}
        exited = asyncio.Event()
        closers: list[Callable[[], None]] = []
        result: dict[str, Any] = {}
        pumps: list[asyncio.Future[None]] = []
        try:
            if proc.stdin_fd is not None:  # stdin is empty, as LXD's nil stdin
                os.close(proc.stdin_fd)
                own.discard(proc.stdin_fd)
            outs = ([proc.pty_fd] if proc.pty_fd is not None
                    else [proc.stdout_fd, proc.stderr_fd])
            sinks: list[Sink] = [discard, discard]
            if post.record_output:
                out_dir.mkdir(parents=True, exist_ok=True)
                files = [f"exec_{op_id}.stdout", f"exec_{op_id}.stderr"]
                for i, fname in enumerate(files):
                    sinks[i], close = file_sink(out_dir / fname)
                    closers.append(close)
                base = url("instances", req.name, "default")
                result["output"] = {"1": f"{base}/logs/{files[0]}",
                                    "2": f"{base}/logs/{files[1]}"}
            pumps = [asyncio.ensure_future(pump_out(fd, sinks[i], exited))
                     for i, fd in enumerate(outs)]
            _release(proc)
            result["return"] = await _wait_exit(proc, exited)
            await asyncio.gather(*pumps)
            return result
        finally:
            if not exited.is_set():
                proc.signal(signal.SIGKILL)
            await _cancel(pumps)
            for close in closers:
                close()
            _close_all(own)


async def _wait_exit(proc: Any, exited: asyncio.Event) -> int:
    """The exit code: told by the driver when it can (``on_exit``), else waited for in a
    thread of its own (not the shared pool: a long command must not hold one of the few
    workers ``to_thread`` has)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    on_exit = getattr(proc, "on_exit", None)
    if on_exit is not None:  # the driver tells us: no thread blocked in wait()
        def ended() -> None:
            loop.call_soon_threadsafe(_settle, done, proc)

        on_exit(ended)
        try:
            return await asyncio.shield(done)
        finally:
            if done.done():
                exited.set()

    def wait() -> None:
        try:
            code = proc.wait()
        except Exception as exc:  # pragma: no cover - waitpid failing is a bug
            loop.call_soon_threadsafe(done.set_exception, exc)
            return
        loop.call_soon_threadsafe(done.set_result, code)

    threading.Thread(target=wait, name=f"exec-wait-{proc.pid}", daemon=True).start()
    try:
        return await asyncio.shield(done)
    finally:
        if done.done():
            exited.set()


class _Early:
    """An attach begun before its operation exists (held before exec). Whoever runs the
    operation takes it; if the operation never starts, the endpoint abandons it. Exactly
    one of the two ends it: its fds must be closed once."""

    def __init__(self, fut: asyncio.Future[ExecProcess]) -> None:
        self.fut = fut
        self.taken = False

    def take(self) -> asyncio.Future[ExecProcess]:
        self.taken = True
        return self.fut


async def _abandon_unless_taken(early: _Early | None) -> None:
    if early is not None and not early.taken:
        early.taken = True
        await _abandon(early.fut)


def _release(proc: ExecProcess) -> None:
    release = getattr(proc, "release", None)
    if release is not None:
        release()


async def _abandon(starting: asyncio.Future[ExecProcess]) -> None:
    """The exec will not run (websockets never came, or it was cancelled): a held command
    exits without running, one already running is killed; its fds are closed."""
    try:
        await asyncio.shield(starting)
    except BaseException:
        if not starting.done():  # we are cancelled: undo once it has started
            starting.add_done_callback(_discard_started)
            return
    _discard_started(starting)


def _discard_started(fut: asyncio.Future[ExecProcess]) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    proc = fut.result()
    abandon = getattr(proc, "abandon", None)
    if abandon is not None:
        abandon()
    else:
        proc.signal(signal.SIGKILL)
    _close_all({fd for fd in (proc.pty_fd, proc.stdin_fd, proc.stdout_fd, proc.stderr_fd)
                if fd is not None})


def _settle(done: asyncio.Future[int], proc: ExecProcess) -> None:
    if done.done():
        return
    try:
        done.set_result(proc.wait())  # ended: does not block
    except Exception as exc:
        done.set_exception(exc)


async def _cancel(tasks: list[asyncio.Future[Any]]) -> None:
    """Stop helper tasks before their fds are closed (their readers must go first)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class ExecFilesConsoleMixin(ExecMixin, FilesMixin, ConsoleMixin, ConsoleAttachMixin):
    """Everything the instance service needs for exec, files, console and logs."""
