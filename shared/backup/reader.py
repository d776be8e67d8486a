"""Reading a backup tarball as a stream, from the ``transfers`` object store.

Why a stream: an import must not need a second copy of the tarball on disk next to the
one staged in JetStream; tarfile reads it in one pass (``r|*``) in a worker thread while
an asyncio task pulls the object's chunks, with a small bounded queue between them.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

from shared.errors import BadRequest

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 256 * 1024


class Aborted(Exception):
    """The reader stopped reading (it found what it wanted, or failed)."""


class ObjectReader(io.RawIOBase):
    """A blocking file-like view of one object; ``read`` runs in a worker thread."""

    def __init__(self, store: Any, name: str) -> None:
        self.store, self.name = store, name
        self.q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        self.buf = b""
        self.done = False
        self.stop = threading.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> "ObjectReader":
        self.task = asyncio.create_task(self._pull())
        return self

    async def _pull(self) -> None:
        reader = self

        class Sink:
            def write(self, data: bytes) -> int:  # called by nats-py in a worker thread
                while True:
                    if reader.stop.is_set():
                        raise Aborted()
                    try:
                        reader.q.put(bytes(data), timeout=0.5)
                        return len(data)
                    except queue.Full:
                        continue

        try:
            await self.store.get(self.name, writeinto=Sink())
            self._put_end(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put_end(exc if not isinstance(exc, Aborted) else None)

    def _put_end(self, item: BaseException | None) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    async def close_async(self) -> None:
        self.stop.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 10)
            except (asyncio.TimeoutError, Exception):
                self.task.cancel()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        while not self.buf and not self.done:
            item = self.q.get()
            if item is None:
                self.done = True
            elif isinstance(item, BaseException):
                self.done = True
                raise BadRequest(f"Reading the uploaded backup failed: {item}")
            else:
                self.buf = item
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class _Peek(io.RawIOBase):
    def __init__(self, raw: io.RawIOBase) -> None:
        self.raw = raw
        self.head = b""

    def peek(self, n: int) -> bytes:
        while len(self.head) < n:
            data = self.raw.read(n - len(self.head))
            if not data:
                break
            self.head += data
        return self.head[:n]

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.raw.readinto(b)  # type: ignore[no-any-return]


class _ZstdDecoded(io.RawIOBase):
    """zstd has no module in the venv: the zstd program decodes, fed by a thread."""

    def __init__(self, src: io.RawIOBase) -> None:
        self.proc = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.src = src
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        try:
            while data := self.src.read(CHUNK):
                self.proc.stdin.write(data)
        except (OSError, BadRequest):
            pass
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        assert self.proc.stdout is not None
        return self.proc.stdout.readinto(b)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        super().close()


def open_tar(raw: io.RawIOBase) -> tarfile.TarFile:
    """The tarball in one pass: gzip, bzip2, xz, zstd or none (LXD's algorithms)."""
    peek = _Peek(raw)
    stream: io.RawIOBase = peek
    if peek.peek(4) == ZSTD_MAGIC:
        stream = _ZstdDecoded(peek)
    try:
        return tarfile.open(fileobj=io.BufferedReader(stream, CHUNK), mode="r|*")
    except tarfile.TarError as exc:
        raise BadRequest(f"Invalid backup: not a tarball ({exc})") from None


def read_index(tar: tarfile.TarFile) -> bytes:
    """``backup/index.yaml``: LXD writes it first; anything before it is skipped."""
    from .layout import INDEX

    try:
        for member in tar:
            if member.name.strip("/") == INDEX and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                return f.read(1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as exc:
        raise BadRequest(f"Invalid backup: the tarball is damaged ({exc})") from None
    raise BadRequest("Invalid backup: no backup/index.yaml in the tarball")


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, rel: str,
            link_root: Path, link_prefix: str) -> None:
    """One member at ``dest/rel``, as root, with its numeric owner and its mode.

    Nothing is written outside ``dest``: a path through a symlink the archive made, or a
    hard link to outside the tree, is a 400. ``link_prefix`` is the archive path of
    ``link_root`` (hard link names are archive paths)."""
    target = dest / rel if rel else dest
    parent = os.path.realpath(target.parent) if rel else str(dest)
    if rel and not (parent + os.sep).startswith(str(dest) + os.sep) and parent != str(dest):
        raise BadRequest(f"Invalid backup: {member.name[:200]!r} leaves the volume")
    if not rel:  # the volume's own directory: the pool's mode (unprivileged roots must
        return   # traverse it), not the exporter's (LXD's is 0100)
    if member.islnk():
        lname = member.linkname.strip("/")
        if not lname.startswith(link_prefix + "/"):
            raise BadRequest(f"Invalid backup: hard link {member.name[:200]!r} leaves the "
                             "volume")
        src = link_root / lname[len(link_prefix) + 1:]
        real = os.path.realpath(src)
        if not real.startswith(str(link_root) + os.sep):
            raise BadRequest(f"Invalid backup: hard link {member.name[:200]!r} leaves the "
                             "volume")
        _clear(target)
        os.link(real, target)
        return
    if os.path.islink(target) or (os.path.lexists(target) and not member.isdir()):
        if os.path.isdir(target) and not os.path.islink(target):
            raise BadRequest(f"Invalid backup: {member.name[:200]!r} replaces a directory")
        target.unlink()
    try:
        tar.extract(member, path=str(dest), set_attrs=True, numeric_owner=True,
                    filter=_rename(rel))
    except (tarfile.TarError, EOFError, zlib_error()) as exc:
        raise BadRequest(f"Invalid backup: the tarball is damaged ({exc})") from None
    for k, v in (member.pax_headers or {}).items():
        if k.startswith("SCHILY.xattr.") and not member.issym():
            try:
                os.setxattr(target, k[13:], v.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError:
                pass


def _rename(rel: str) -> Any:
    def filt(member: tarfile.TarInfo, _path: str) -> tarfile.TarInfo:
        return member.replace(name=rel, deep=False)
    return filt


def _clear(path: Path) -> None:
    if os.path.lexists(path) and not path.is_dir():
        path.unlink()
