"""Writing a raw disk stream into a new qcow2 through ``qemu-nbd``, with no staged copy.

Why: ``qemu-img convert`` cannot read a pipe (it needs the size and to seek), so an
import would otherwise stage the whole raw disk beside its qcow2 (twice the allocated
size on the pool until the convert ends). ``qemu-nbd`` serves the new, empty qcow2 on a
unix socket and this minimal NBD client (fixed-newstyle handshake, ``NBD_OPT_EXPORT_NAME``,
simple replies: the NBD protocol's baseline, see the NBD project's proto.md) writes the
non-zero blocks in order; the qcow2 stays sparse. qemu-nbd serves one client, then exits.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from shared.errors import BadRequest, CorralError, Internal

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_EXPORT_NAME = 1
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
REQUEST_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
CMD_WRITE, CMD_DISC, CMD_FLUSH = 1, 2, 3
CHUNK = 1024 * 1024
START_TIMEOUT = 10.0


class Client:
    """One NBD connection to ``sock`` (after the handshake: ``write``, ``flush``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handle = 0
        if self._recv(8) != NBDMAGIC or struct.unpack(">Q", self._recv(8))[0] != IHAVEOPT:
            raise Internal("qemu-nbd did not answer as an NBD fixed-newstyle server")
        (flags,) = struct.unpack(">H", self._recv(2))
        mine = FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)
        self.sock.sendall(struct.pack(">I", mine))
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 0))
        self.size, _tflags = struct.unpack(">QH", self._recv(10))
        if not mine & FLAG_NO_ZEROES:
            self._recv(124)

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                raise Internal("qemu-nbd closed the connection")
            buf += data
        return bytes(buf)

    def _request(self, cmd: int, offset: int = 0, data: bytes = b"") -> None:
        self.handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self.handle,
                                      offset, len(data)) + data)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != REPLY_MAGIC or handle != self.handle:
            raise Internal("qemu-nbd sent an unexpected reply")
        if error:
            if error == 28:  # ENOSPC
                raise CorralError("The storage pool is full (writing the VM disk)", 507)
            raise Internal(f"qemu-nbd: {os.strerror(error)} writing at {offset}")

    def write(self, offset: int, data: bytes) -> None:
        self._request(CMD_WRITE, offset, data)

    def flush(self) -> None:
        self._request(CMD_FLUSH)

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.sock.close()


def write_qcow2(read: Callable[[int], bytes], size: int, target: Path) -> None:
    """A new standalone qcow2 ``target`` of ``size`` bytes holding what ``read`` yields
    (all-zero blocks are left unallocated)."""
    res = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), str(size)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise Internal(f"qemu-img create failed: {res.stderr.strip()[:500]}")
    scratch = Path(tempfile.mkdtemp(prefix="corral-nbd-"))  # short: a socket path is
    sock_path = scratch / "sock"                              # at most 107 bytes
    proc = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", str(sock_path),
                             "--cache=writeback", str(target)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = _connect(proc, sock_path)
        try:
            if client.size != size:
                raise Internal(f"qemu-nbd serves {client.size} bytes, not {size}")
            pos = 0
            while pos < size:
                data = read(min(CHUNK, size - pos))
                if not data:
                    raise BadRequest("Invalid backup: the VM disk image ends early")
                if data.count(0) != len(data):
                    client.write(pos, data)
                pos += len(data)
            client.flush()
        finally:
            client.close()
        if proc.wait(30) != 0:
            raise Internal(f"qemu-nbd failed: {_stderr(proc)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def _connect(proc: subprocess.Popen[bytes], path: Path) -> Client:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise Internal(f"qemu-nbd did not start: {_stderr(proc)}")
        if path.exists():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return Client(sock)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
        if time.monotonic() > deadline:
            raise Internal("qemu-nbd did not open its socket in time")
        time.sleep(0.05)


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    try:
        assert proc.stderr is not None
        return proc.stderr.read().decode(errors="replace").strip()[:500]
    except Exception:
        return "(no message)"
