"""Exec inside an LXC container without blocking: pipes or a host-side pty.

Why: LXD's exec streams stdin/stdout/stderr over websockets; an async caller needs plain
fds it can register with its loop, a pid, and a blocking ``wait`` it can run in a thread.
``Container.attach`` forks the attached process as our direct child (LXC clones it with
CLONE_PARENT) and returns its pid at once. All fds we create are close-on-exec, so a
concurrently attached command never inherits another command's pipe ends (which would
delay EOF); LXC's dup2 onto 0/1/2 clears the flag for the chosen ones only.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading

import lxc

from shared.errors import BadRequest, Internal

from .base import ExecProcess


def _payload(arg: tuple[list[str], bool]) -> int:
    """Runs in the attached child, inside the container, just before exec.

    For a pty it makes the command a session leader with the pty as its controlling
    terminal, so ^C on the master and job control reach it. Only already-imported
    modules are used: the container's root is now the filesystem root.
    """
    cmd, tty = arg
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


def attach(container: lxc.Container, command: list[str], env: dict[str, str], cwd: str,
           uid: int, gid: int, interactive: bool, width: int, height: int) -> LXCExecProcess:
    """Start ``command`` in ``container``; returns at once with the parent's fds."""
    opts = dict(env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                extra_env_vars=tuple(f"{k}={v}" for k, v in env.items()),
                initial_cwd=cwd, uid=uid, gid=gid)
    if interactive:
        master, slave = os.openpty()
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
