"""Exec inside an LXC container without blocking: pipes or a host-side pty.

Why: LXD's exec streams stdin/stdout/stderr over websockets; an async caller needs plain
fds it can register with its loop, a pid, and a blocking ``wait`` it can run in a thread.
The attach itself happens in a helper process (:mod:`.lxc_attach_helper`: python-lxc holds
the GIL for the whole attach, which froze the service's event loop); we hand it the
command's ends of the pipes (or the pty's slave) and get the pid and a pidfd back, then
its exit code when it ends. All fds we create are close-on-exec, so a concurrently
attached command never inherits another command's pipe ends (which would delay EOF);
LXC's dup2 onto 0/1/2 clears the flag for the chosen ones only.

The command gets exactly fds 0-2: the attached child marks every other fd close-on-exec
just before exec, so nothing the service holds (or inherited from whoever started it)
leaks into an instance. A pty is allocated in the container's own devpts, as LXD does,
so ``tty``, ``sudo`` and ``ssh-keygen`` can name the terminal inside the container.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator

import lxc

from shared.errors import BadRequest, Internal

from .base import ExecProcess

_libc = ctypes.CDLL(None, use_errno=True)
TIOCGPTPEER = 0x5441  # open the peer of a pty master without a path (Linux >= 4.13)
TIOCSPTLCK = 0x40045431
SYS_OPENAT2 = 437  # Linux >= 5.6
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
PTMX_RDEV = os.makedev(5, 2)
HELPER = Path(__file__).with_name("lxc_attach_helper.py")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _open_in_root(root: str, path: str, flags: int) -> int:
    """openat2 of ``path`` with every symlink resolved inside ``root`` (a container's
    root seen from the host): an absolute link in the container never leads to ours."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(SYS_OPENAT2, root_fd, path.encode(), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return fd
    finally:
        os.close(root_fd)


class LXCExecProcess(ExecProcess):
    """A command attached into a container; see :class:`ExecProcess`.

    Its exit code comes from the helper (the command is the helper's child); signals go
    through a pidfd, so one sent after the command ended never reaches a reused pid.
    ``hold_fd`` (when attached with ``hold``): the command waits before exec until
    :meth:`release`; :meth:`abandon` makes it exit without running.
    """

    def __init__(self, pid: int, pidfd: int, hold_fd: int | None = None,
                 **fds: int | None) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd
        self._hold_fd = hold_fd
        for k, v in fds.items():
            setattr(self, k, v)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._status: int | None = None
        self._error: str | None = None
        self._callbacks: list[Callable[[], None]] = []

    def _ended(self, code: int | None, error: str | None = None) -> None:
        """From the helper's reader: the exit code (or why there will be none)."""
        with self._lock:
            self._status, self._error = code, error
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._close_hold()
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            _call_quietly(cb)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from another thread) once :meth:`wait` would not block; at
        once if the command has ended. Lets an event loop learn the exit without a thread
        blocked in ``wait`` per command."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self) -> int:
        self._done.wait()
        if self._status is None:
            raise Internal(self._error or "The command's exit code was lost")
        return self._status

    def poll(self) -> int | None:
        """Exit code if the command has ended, else None (never blocks)."""
        return self._status if self._done.is_set() else None

    def signal(self, signum: int) -> None:
        with self._lock:
            if self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass

    def release(self) -> None:
        """Let a held command exec (see the class docstring)."""
        with self._lock:
            if self._hold_fd is not None:
                try:
                    os.write(self._hold_fd, b"1")
                except OSError:  # it is gone already: its exit code tells
                    pass
                self._close_hold()

    def abandon(self) -> None:
        """A held command exits (255) without running."""
        with self._lock:
            self._close_hold()

    def _close_hold(self) -> None:
        if self._hold_fd is not None:
            os.close(self._hold_fd)
            self._hold_fd = None

    def resize(self, width: int, height: int) -> None:
        if self.pty_fd is None:
            raise BadRequest("Window size can only be set for an interactive exec")
        set_winsize(self.pty_fd, width, height)


def _call_quietly(cb: Callable[[], None]) -> None:
    """A waiter's callback must not kill the helper's reader (e.g. its loop is closed)."""
    try:
        cb()
    except Exception:
        pass


class AttachHelper:
    """The service's end of :mod:`.lxc_attach_helper`: started on first use (again if it
    died), one reader thread that routes its replies and exit codes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._next = 0
        self._replies: dict[int, Future[dict[str, Any]]] = {}
        self._procs: dict[int, LXCExecProcess] = {}
        self._early: dict[int, int] = {}  # exit codes that came before track()

    def _ensure(self) -> socket.socket:
        with self._lock:
            if self._sock is not None:
                return self._sock
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # -I: the helper's own directory must not shadow python-lxc (drivers/lxc.py)
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", str(HELPER), str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    close_fds=True)
            finally:
                theirs.close()
            self._sock = ours
            threading.Thread(target=self._read, args=(ours, self._proc),
                             name="lxc-attach-reader", daemon=True).start()
            return ours

    def attach(self, req: dict[str, Any], fds: list[int]) -> tuple[int, int, int]:
        """Send one attach; returns (request id, pid, pidfd). Raises Internal."""
        sock = self._ensure()
        fut: Future[dict[str, Any]] = Future()
        with self._lock:
            self._next += 1
            req_id = self._next
            self._replies[req_id] = fut
        try:
            sock.sendmsg([json.dumps({**req, "id": req_id}).encode()],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError as exc:
            with self._lock:
                self._replies.pop(req_id, None)
            raise Internal(f"The attach helper is gone: {exc}") from None
        reply = fut.result()
        if "error" in reply:
            raise Internal(reply["error"])
        return req_id, reply["pid"], reply["pidfd"]

    def track(self, req_id: int, proc: LXCExecProcess) -> None:
        """Route ``req_id``'s exit code to ``proc`` (it may have come already)."""
        with self._lock:
            if req_id not in self._early:
                self._procs[req_id] = proc
                return
            code = self._early.pop(req_id)
        proc._ended(code)

    def _read(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        while True:
            try:
                data, anc, _f, _a = sock.recvmsg(65536, socket.CMSG_SPACE(4))
            except OSError:
                data, anc = b"", []
            if not data:
                break
            msg = json.loads(data)
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    msg["pidfd"] = array.array("i", raw[:4])[0]
            self._route(msg)
        with self._lock:  # the helper died: no reply or exit code will come
            if self._sock is sock:
                self._sock = None
            replies, self._replies = self._replies, {}
            procs, self._procs = self._procs, {}
            self._early.clear()
        sock.close()
        proc.wait()
        for fut in replies.values():
            fut.set_result({"error": "The attach helper exited"})
        for p in procs.values():
            p._ended(None, "The attach helper exited before the command ended")

    def _route(self, msg: dict[str, Any]) -> None:
        req_id = msg["id"]
        with self._lock:
            if "exit" not in msg:
                fut = self._replies.pop(req_id, None)
            else:
                fut = None
                target = self._procs.pop(req_id, None)
                if target is None:  # the exit came before track(): keep it for track()
                    self._early[req_id] = msg["exit"]
                    return
        if fut is not None:
            fut.set_result(msg)
        else:
            target._ended(msg["exit"])


_helper = AttachHelper()
_holding = threading.local()


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Commands this thread attaches meanwhile wait before exec until ``release()``.

    Why a context rather than an argument: the driver interface's ``exec_start`` is the
    same for every driver; the exec endpoint asks the container driver to hold this way.
    """
    _holding.on = True
    try:
        yield
    finally:
        _holding.on = False


def set_winsize(fd: int, width: int, height: int) -> None:
    if not (0 < width < 65536 and 0 < height < 65536):
        raise BadRequest(f"Invalid terminal size {width}x{height}")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _host_id(map_path: Path, inner: int) -> int | None:
    """``inner`` (an id in the container) as the host sees it, from a uid_map/gid_map."""
    for line in map_path.read_text().splitlines():
        first, host, count = (int(x) for x in line.split())
        if first <= inner < first + count:
            return host + inner - first
    return None


def open_instance_pty(init_pid: int, uid: int, gid: int) -> tuple[int, int]:
    """(master, slave) of a new pty in the devpts mounted in the container of ``init_pid``.

    Why: a host pty is unnamed inside the container (``tty`` says "not a tty"). The master
    comes from the container's ``/dev/pts/ptmx`` (resolved inside the container's root and
    checked to be a ptmx before it is opened); the slave by TIOCGPTPEER, never by a path
    the container could swap. The slave belongs to the user the command runs as,
    as ``login`` and sshd leave a terminal (LXD gives it to the container's root).
    """
    proc = Path(f"/proc/{init_pid}")
    where = _open_in_root(str(proc / "root"), "dev/pts/ptmx", os.O_PATH | os.O_CLOEXEC)
    try:  # the container owns that path: open it only if it is really a ptmx
        st = os.fstat(where)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_RDEV:
            raise OSError(errno.ENOTTY, "not a ptmx", "/dev/pts/ptmx")
        master = os.open(f"/proc/self/fd/{where}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(where)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            host_uid, host_gid = _host_id(proc / "uid_map", uid), _host_id(proc / "gid_map", gid)
            if host_uid is not None and host_gid is not None:
                os.fchown(slave, host_uid, host_gid)
        except BaseException:
            os.close(slave)
            raise
    except BaseException:
        os.close(master)
        raise
    return master, slave


def _pty_for(container: lxc.Container, uid: int, gid: int) -> tuple[int, int]:
    """The container's own pty; a host pty only when the container has no devpts."""
    try:
        return open_instance_pty(container.init_pid, uid, gid)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTTY, errno.EINVAL, errno.ENXIO,
                             errno.ENOSYS, errno.EXDEV, errno.ELOOP):
            raise
        return os.openpty()


def attach(container: lxc.Container, command: list[str], env: dict[str, str], cwd: str,
           uid: int, gid: int, interactive: bool, width: int, height: int,
           hold: bool = False) -> LXCExecProcess:
    """Start ``command`` in ``container``; returns at once with the parent's fds.

    ``hold`` (or :func:`holding`): the command waits before exec until ``release()``.
    """
    hold = hold or getattr(_holding, "on", False)
    req = {"name": container.name, "lxcpath": container.get_config_path(),
           "command": list(command), "env": [f"{k}={v}" for k, v in env.items()],
           "cwd": cwd, "uid": uid, "gid": gid, "tty": interactive}
    parent: dict[str, int] = {}
    child: list[int] = []
    hold_fd: int | None = None
    try:
        if interactive:
            master, slave = _pty_for(container, uid, gid)
            parent["pty_fd"] = master
            child = [slave, slave, slave]
            set_winsize(master, width, height)
        else:
            ends = [os.pipe() for _ in range(3)]  # (r, w) each; Python makes them O_CLOEXEC
            child = [ends[0][0], ends[1][1], ends[2][1]]
            parent.update(stdin_fd=ends[0][1], stdout_fd=ends[1][0], stderr_fd=ends[2][0])
        if hold:
            hold_r, hold_fd = os.pipe()
            child.append(hold_r)
        req_id, pid, pidfd = _helper.attach(req, child)
    except BaseException:
        for fd in parent.values():
            os.close(fd)
        if hold_fd is not None:
            os.close(hold_fd)
        raise
    finally:
        for fd in set(child):
            os.close(fd)
    proc = LXCExecProcess(pid, pidfd, hold_fd, **parent)
    _helper.track(req_id, proc)
    return proc
