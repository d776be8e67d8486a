"""Exec inside an LXC container without blocking: pipes or a host-side pty.

Why: LXD's exec streams stdin/stdout/stderr over websockets; an async caller needs plain
fds it can register with its loop, a pid, and a blocking ``wait`` it can run in a thread.
``Container.attach`` forks the attached process as our direct child (LXC clones it with
CLONE_PARENT) and returns its pid at once. All fds we create are close-on-exec, so a
concurrently attached command never inherits another command's pipe ends (which would
delay EOF); LXC's dup2 onto 0/1/2 clears the flag for the chosen ones only.

The command gets exactly fds 0-2: the attached child marks every other fd close-on-exec
just before exec, so nothing the service holds (or inherited from whoever started it)
leaks into an instance. A pty is allocated in the container's own devpts, as LXD does,
so ``tty``, ``sudo`` and ``ssh-keygen`` can name the terminal inside the container.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
import termios
import threading
from pathlib import Path

import lxc

from shared.errors import BadRequest, Internal

from .base import ExecProcess

_libc = ctypes.CDLL(None, use_errno=True)
SYS_CLOSE_RANGE = 436  # same number on every architecture (Linux >= 5.9)
CLOSE_RANGE_CLOEXEC = 1 << 2
TIOCGPTPEER = 0x5441  # open the peer of a pty master without a path (Linux >= 4.13)
TIOCSPTLCK = 0x40045431
SYS_OPENAT2 = 437  # Linux >= 5.6
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
PTMX_RDEV = os.makedev(5, 2)


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


def _cloexec_above_stderr() -> None:
    """Mark every fd above 2 close-on-exec (marking, not closing: LXC may still use its
    own until the exec). Falls back to a loop where close_range is missing."""
    if _libc.syscall(SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0:
        return
    for fd in range(3, os.sysconf("SC_OPEN_MAX")):
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass


def _payload(arg: tuple[list[str], bool]) -> int:
    """Runs in the attached child, inside the container, just before exec.

    For a pty it makes the command a session leader with the pty as its controlling
    terminal, so ^C on the master and job control reach it. Only already-imported
    modules are used: the container's root is now the filesystem root.
    """
    cmd, tty = arg
    _cloexec_above_stderr()
    if tty:
        try:
            os.setsid()
        except OSError:
            pass
        try:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        except OSError:
            pass
    return lxc.attach_run_command(cmd)


class LXCExecProcess(ExecProcess):
    """A command attached into a container; see :class:`ExecProcess`."""

    def __init__(self, pid: int, **fds: int | None) -> None:
        self.pid = pid
        for k, v in fds.items():
            setattr(self, k, v)
        self._lock = threading.Lock()
        self._status: int | None = None

    def wait(self) -> int:
        with self._lock:
            if self._status is None:
                _, status = os.waitpid(self.pid, 0)
                self._status = (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                else os.WEXITSTATUS(status))
            return self._status

    def poll(self) -> int | None:
        """Exit code if the command has ended, else None (never blocks)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._status is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == 0:
                    return None
                self._status = (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                else os.WEXITSTATUS(status))
            return self._status
        finally:
            self._lock.release()

    def signal(self, signum: int) -> None:
        # Until reaped the pid cannot be reused, so this never hits a stranger.
        if self._status is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def resize(self, width: int, height: int) -> None:
        if self.pty_fd is None:
            raise BadRequest("Window size can only be set for an interactive exec")
        set_winsize(self.pty_fd, width, height)


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
           uid: int, gid: int, interactive: bool, width: int, height: int) -> LXCExecProcess:
    """Start ``command`` in ``container``; returns at once with the parent's fds."""
    opts = dict(env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                extra_env_vars=tuple(f"{k}={v}" for k, v in env.items()),
                initial_cwd=cwd, uid=uid, gid=gid)
    if interactive:
        master, slave = _pty_for(container, uid, gid)
        try:
            set_winsize(master, width, height)
            pid = container.attach(_payload, (command, True), stdin=slave, stdout=slave,
                                   stderr=slave, **opts)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        if pid <= 0:
            os.close(master)
            raise Internal(f"Failed to attach to container {container.name}")
        return LXCExecProcess(pid, pty_fd=master)
    ends = [os.pipe() for _ in range(3)]  # (r, w) each; Python makes them O_CLOEXEC
    child = (ends[0][0], ends[1][1], ends[2][1])
    parent = {"stdin_fd": ends[0][1], "stdout_fd": ends[1][0], "stderr_fd": ends[2][0]}
    try:
        pid = container.attach(_payload, (command, False), stdin=child[0], stdout=child[1],
                               stderr=child[2], **opts)
    except BaseException:
        for fd in parent.values():
            os.close(fd)
        raise
    finally:
        for fd in child:
            os.close(fd)
    if pid <= 0:
        for fd in parent.values():
            os.close(fd)
        raise Internal(f"Failed to attach to container {container.name}")
    return LXCExecProcess(pid, **parent)
