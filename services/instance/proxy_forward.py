"""One proxy device's forwarder: its own process (LXD's ``forkproxy``).

Run as ``python -m services.instance.proxy_forward --pid <init pid> --listen <addr>
--connect <addr> --bind host|instance [--uid N --gid N --mode 0644]``.

Why a process of its own, in its own session: it must keep serving while the instance
service restarts (that service adopts it again from its pid file, see :mod:`.proxy`), and
it dies with its container: it watches the init pid it was given (pid and start time) and
exits when that process is gone, so a container stopped from inside leaves no forwarder.

Network namespaces: a socket belongs to the namespace of the thread that made it, so the
listening socket is made in the listen side's namespace and each outgoing one in the
other's (``setns`` around ``socket()``, then back). Unix socket paths inside the container
are reached through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
from contextlib import contextmanager
from typing import Iterator

from .proxy_fs import open_in_root
from .proxy_rules import Address, parse_address

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
UDP_IDLE = 60.0  # seconds a UDP client's mapping is kept without traffic


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[19]


class Sides:
    """The two namespaces (host, instance) and where each address lives."""

    def __init__(self, pid: int, bind: str) -> None:
        self.pid = pid
        self.start = _start_time(pid)
        self.host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inst_ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.listen_ns = self.host_ns if bind == "host" else self.inst_ns
        self.connect_ns = self.inst_ns if bind == "host" else self.host_ns
        self.listen_in_instance = bind == "instance"
        # The container's root, opened once as root (ptrace right on its init needed).
        self.root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.listen_dir: tuple[int, str] | None = None

    @contextmanager
    def inside(self, ns: int) -> Iterator[None]:
        _setns(ns)
        try:
            yield
        finally:
            _setns(self.host_ns)

    def path(self, addr: Address) -> str:
        """A host path or an abstract name (paths in the container: see connect_path)."""
        return "\0" + addr.path[1:] if addr.path.startswith("@") else addr.path

    def connect_path(self, addr: Address) -> tuple[str, int | None]:
        """(address, fd to close after the connect) of a socket in the container: its
        path resolved inside its root (see :func:`open_in_root`), reached through our fd."""
        if addr.path.startswith("@"):
            return self.path(addr), None
        fd = open_in_root(self.root, addr.path, os.O_PATH)
        return f"/proc/self/fd/{fd}", fd

    def directory(self, path: str) -> tuple[int, str]:
        """(fd of the parent directory inside the container, last component)."""
        parent, base = os.path.split(os.path.normpath(path))
        return open_in_root(self.root, parent, os.O_PATH | os.O_DIRECTORY), base

    def alive(self) -> bool:
        try:
            return _start_time(self.pid) == self.start
        except (OSError, IndexError):
            return False


def _family(addr: Address) -> int:
    if addr.proto == "unix":
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in addr.host else socket.AF_INET


def _sockaddr(sides: Sides, addr: Address):
    """Where to bind or connect on the host side (or an abstract unix name)."""
    return sides.path(addr) if addr.proto == "unix" else (addr.host, addr.port)


def make_listener(sides: Sides, addr: Address, uid: int, gid: int, mode: int
                  ) -> socket.socket:
    kind = socket.SOCK_DGRAM if addr.proto == "udp" else socket.SOCK_STREAM
    with sides.inside(sides.listen_ns):
        s = socket.socket(_family(addr), kind)
    if addr.proto != "unix":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if addr.proto == "unix" and not addr.path.startswith("@") and \
            not sides.listen_in_instance:
        if os.path.exists(addr.path):
            os.unlink(addr.path)  # a socket left by an earlier forwarder of this device
        s.bind(addr.path)
        os.chown(addr.path, uid, gid)
        os.chmod(addr.path, mode)
    elif addr.proto == "unix" and not addr.path.startswith("@"):
        # In the container: its directory resolved inside its root; the socket file made
        # as its owner (in the container's file systems host root is no id at all:
        # EOVERFLOW; the owner, mapped to host ids, is), through our own fd.
        dfd, base = sides.directory(addr.path)
        sides.listen_dir = (dfd, base)
        try:
            os.unlink(base, dir_fd=dfd)  # left by an earlier forwarder of this device
        except FileNotFoundError:
            pass
        os.setegid(gid)
        os.seteuid(uid)
        try:  # chmod as the owner too: never as root on a name the container controls
            s.bind(f"/proc/self/fd/{dfd}/{base}")
            os.chmod(f"/proc/self/fd/{dfd}/{base}", mode)
        finally:
            os.seteuid(0)
            os.setegid(0)
    else:
        s.bind(_sockaddr(sides, addr))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(False)
    return s


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def serve_stream(sides: Sides, listener: socket.socket, connect: Address) -> None:
    loop = asyncio.get_running_loop()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with sides.inside(sides.connect_ns):
            out = socket.socket(_family(connect), socket.SOCK_STREAM)
        out.setblocking(False)
        try:
            fd = None
            if connect.proto == "unix" and not sides.listen_in_instance:
                where, fd = sides.connect_path(connect)
            else:
                where = _sockaddr(sides, connect)
            try:
                await loop.sock_connect(out, where)
            finally:
                if fd is not None:
                    os.close(fd)
            r2, w2 = await asyncio.open_connection(sock=out)
        except OSError:
            out.close()
            writer.close()
            return
        await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))
        for w in (writer, w2):
            w.close()

    server = await asyncio.start_server(client, sock=listener)
    async with server:
        await server.serve_forever()


class _Back(asyncio.DatagramProtocol):
    def __init__(self, front: asyncio.DatagramTransport, client: tuple) -> None:
        self.front, self.client = front, client
        self.last = asyncio.get_running_loop().time()

    def datagram_received(self, data: bytes, addr) -> None:
        self.last = asyncio.get_running_loop().time()
        self.front.sendto(data, self.client)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, sides: Sides, connect: Address) -> None:
        self.sides, self.connect = sides, connect
        self.backs: dict[tuple, tuple[asyncio.DatagramTransport, _Back]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        asyncio.ensure_future(self._forward(data, addr))

    async def _forward(self, data: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        if addr not in self.backs:
            with self.sides.inside(self.sides.connect_ns):
                s = socket.socket(_family(self.connect), socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((self.connect.host, self.connect.port))
            assert self.transport is not None
            proto = _Back(self.transport, addr)
            tr, _ = await loop.create_datagram_endpoint(lambda: proto, sock=s)
            self.backs[addr] = (tr, proto)
        tr, proto = self.backs[addr]
        proto.last = loop.time()
        tr.sendto(data)

    def expire(self, now: float) -> None:
        for addr, (tr, proto) in list(self.backs.items()):
            if now - proto.last > UDP_IDLE:
                tr.close()
                del self.backs[addr]


async def serve_udp(sides: Sides, listener: socket.socket, connect: Address) -> None:
    loop = asyncio.get_running_loop()
    front = _Front(sides, connect)
    await loop.create_datagram_endpoint(lambda: front, sock=listener)
    while True:
        await asyncio.sleep(UDP_IDLE / 2)
        front.expire(loop.time())


async def watch(sides: Sides) -> None:
    while sides.alive():
        await asyncio.sleep(1.0)


async def main_async(args: argparse.Namespace) -> int:
    listen = parse_address("proxy", "listen", args.listen)
    connect = parse_address("proxy", "connect", args.connect)
    sides = Sides(args.pid, args.bind)
    listener = make_listener(sides, listen, args.uid, args.gid, int(args.mode, 8))
    serve = serve_udp if listen.proto == "udp" else serve_stream
    print("ready", flush=True)  # the parent waits for this line (or our exit and stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.ensure_future(serve(sides, listener, connect)),
             asyncio.ensure_future(watch(sides)), asyncio.ensure_future(stop.wait())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    if listen.proto == "unix" and not listen.path.startswith("@"):
        try:
            if sides.listen_dir:
                os.unlink(sides.listen_dir[1], dir_fd=sides.listen_dir[0])
            else:
                os.unlink(listen.path)
        except OSError:
            pass
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            print(f"error: {t.exception()}", file=sys.stderr, flush=True)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="proxy_forward")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--connect", required=True)
    p.add_argument("--bind", choices=("host", "instance"), default="host")
    p.add_argument("--uid", type=int, default=0)
    p.add_argument("--gid", type=int, default=0)
    p.add_argument("--mode", default="0644")
    p.add_argument("--device", default="")  # for ps and adoption: which device this is
    args = p.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
