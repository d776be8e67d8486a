"""A small process that attaches commands into containers for the instance service.

Why a process of its own: python-lxc's ``Container.attach`` holds the GIL for the whole
attach (two forks, the cgroup moves, the namespace joins: 4 ms on a quiet host, 40 ms under
load). Called in the instance service, it froze that process's event loop: every other
exec, request and stream waited, and each fork copied the service's page tables. Here it
freezes only this helper, a fresh interpreter that imports nothing but ``lxc`` (so forks
are cheap), and the service stays responsive.

Protocol, on one SOCK_SEQPACKET socket shared with the service (its fd number is the
argument), a JSON message per packet, fds by SCM_RIGHTS:

- request ``{"id", "lxcpath", "name", "command", "env", "cwd", "uid", "gid", "tty"}`` with
  the command's stdin, stdout, stderr fds, and optionally a fourth, the *hold* fd: the
  attached child blocks reading it just before exec, runs the command on one byte and
  exits 255 without running it on EOF (LXD starts a command only when every websocket is
  connected; the slow attach can happen while they connect);
- reply ``{"id", "pid"}`` with a pidfd of the command (signals never reach a reused pid),
  or ``{"id", "error"}``;
- later ``{"id", "exit": code}`` (128+N when killed by signal N), once the command ended.

The attached command is this helper's child (LXC clones it with CLONE_PARENT), so the
helper reaps it, watching pidfds. EOF on the socket (the service is gone) ends the helper;
running commands go on, as they did when the service itself was their parent.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import json
import os
import selectors
import socket
import sys
import termios

import lxc

SYS_CLOSE_RANGE = 436  # same number on every architecture (Linux >= 5.9)
CLOSE_RANGE_CLOEXEC = 1 << 2
MAX_FDS = 4
BUF = 256 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


def cloexec_above_stderr() -> None:
    """Mark every fd above 2 close-on-exec (marking, not closing: LXC may still use its
    own until the exec). Falls back to a loop where close_range is missing."""
    if _libc.syscall(SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0:
        return
    for fd in range(3, os.sysconf("SC_OPEN_MAX")):
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass


def payload(arg: tuple[list[str], bool, int]) -> int:
    """Runs in the attached child, inside the container, just before exec.

    With a hold fd it first waits for the go (one byte) or gives up on EOF. For a pty it
    makes the command a session leader with the pty as its controlling terminal, so ^C
    on the master and job control reach it. Only already-imported modules are used: the
    container's root is now the filesystem root.
    """
    cmd, tty, hold = arg
    if hold >= 0:
        try:
            go = os.read(hold, 1)
        except OSError:
            go = b""
        if not go:
            return 255
    cloexec_above_stderr()
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


def exit_code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Handles:
    """liblxc's handle of each container, kept while its ``config`` file is unchanged.

    Why: building one parses the container's config (0.3 ms on a quiet host, 5 ms under
    load), and it was built again for every exec. An attach asks the monitor for the
    init pid and cgroups each time, so a kept handle serves any number of attaches; a
    changed config (size, mtime or inode) builds a new one, so attach-time settings
    (environment, personality, LSM profile) follow the instance's updates.
    """

    LIMIT = 256  # containers whose handle is kept (the oldest goes first)

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[tuple[int, int, int], lxc.Container]] = {}

    def get(self, name: str, lxcpath: str) -> lxc.Container:
        try:
            st = os.stat(os.path.join(lxcpath, name, "config"))
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            self._kept.pop((lxcpath, name), None)
            return lxc.Container(name, lxcpath)  # not defined: liblxc says so
        hit = self._kept.pop((lxcpath, name), None)
        if hit is not None and hit[0] == stamp:
            self._kept[(lxcpath, name)] = hit  # most recently used last
            return hit[1]
        c = lxc.Container(name, lxcpath)
        self._kept[(lxcpath, name)] = (stamp, c)
        while len(self._kept) > self.LIMIT:
            self._kept.pop(next(iter(self._kept)))
        return c

    def forget(self, name: str, lxcpath: str) -> None:
        self._kept.pop((lxcpath, name), None)


_handles = Handles()


def attach(req: dict, fds: list[int]) -> int:
    """Attach ``req["command"]``; returns its pid (the fds are the child's stdio)."""
    c = _handles.get(req["name"], req["lxcpath"])
    hold = fds[3] if len(fds) > 3 else -1
    pid = c.attach(payload, (req["command"], req["tty"], hold),
                   stdin=fds[0], stdout=fds[1], stderr=fds[2],
                   env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                   extra_env_vars=tuple(req["env"]), initial_cwd=req["cwd"],
                   uid=req["uid"], gid=req["gid"])
    if pid <= 0:
        _handles.forget(req["name"], req["lxcpath"])  # the next try starts afresh
        raise RuntimeError(f"Failed to attach to container {req['name']}")
    return pid


class Helper:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.children: dict[int, tuple[int, int]] = {}  # pidfd -> (request id, pid)

    def send(self, msg: dict, fds: list[int] | None = None) -> None:
        data = json.dumps(msg).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([data], anc)
        except OSError:  # the service is gone: nothing to tell
            pass

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    if not self.request():
                        return
                else:
                    self.reap(key.fd)

    def request(self) -> bool:
        data, anc, _flags, _addr = self.sock.recvmsg(BUF, socket.CMSG_SPACE(MAX_FDS * 4))
        if not data:
            return False
        fds: list[int] = []
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(raw[:len(raw) - len(raw) % arr.itemsize])
                fds.extend(arr)
        req = json.loads(data)
        try:
            pid = attach(req, fds)
        except Exception as exc:
            self.send({"id": req["id"], "error": str(exc)})
            return True
        finally:
            for fd in fds:
                os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = (req["id"], pid)
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        self.send({"id": req["id"], "pid": pid}, [pidfd])
        return True

    def reap(self, pidfd: int) -> None:
        req_id, pid = self.children.pop(pidfd)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.send({"id": req_id, "exit": exit_code(status)})


def main() -> None:
    # No signal is ignored here: an ignored signal stays ignored in the commands we exec
    # (^C would not reach them).
    fd = int(sys.argv[1])
    os.set_blocking(fd, True)
    sock = socket.socket(fileno=fd)
    try:
        Helper(sock).serve()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
