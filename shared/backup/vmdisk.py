"""A VM's disk as LXD's raw ``<volume>.img`` tar member, both ways, with no full copy.

Why: LXD 5.0 writes a VM's root disk into a backup as a raw image (``backup/
virtual-machine.img``, ``backup/virtual-machine-snapshots/<s>.img``) whose tar header
carries the disk's virtual size. Corral keeps a VM disk as qcow2 (``root.qcow2``; on a dir
pool an overlay on the image volume's ``rootfs.img``, on btrfs an overlay on the volume's
own ``rootfs.img`` copy). Converting the chain to a raw file first would cost a second
disk-sized file on the server, so the export reads the chain directly:

* ``qemu-img info --backing-chain`` names the file at each depth of the chain and
  ``qemu-img map`` says, for each guest range, which depth holds it and where in that
  file (an uncompressed qcow2 cluster is stored as is), or that it is a hole (zeros);
* ranges held in compressed clusters (no host offset) are decoded by ``qemu-img convert``
  through a ``raw`` window (``offset``/``size``) on the top image, a bounded piece at a
  time, into a scratch file of at most :data:`FALLBACK_PIECE` bytes.

``-U`` (force share) everywhere: a running VM's QEMU holds the write lock of its disk.

The import goes the other way: the raw member's non-zero blocks are written through
``qemu-nbd`` into a new standalone ``root.qcow2`` (the form the QEMU driver expects), as
the tarball is read; without qemu-nbd the member is staged sparse beside the disk and
converted by ``qemu-img convert`` (which cannot read a pipe: it needs the size and to
seek).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shared.errors import BadRequest, CorralError, Internal

from . import nbd

DISK = "root.qcow2"    # the VM driver's disk (services/instance/drivers/qemu.py)
IMAGE = "rootfs.img"   # the image disk it may back onto, inside the volume
STAGING = ".corral-import.raw"
# Files of a VM volume that are its disk, not LXD's config filesystem part.
DISK_FILES = frozenset({DISK, IMAGE, STAGING})
CHUNK = 1024 * 1024
FALLBACK_PIECE = 16 * 1024 * 1024
_ZEROS = bytes(CHUNK)


@dataclass
class Extent:
    """One guest range: zeros, bytes of ``path`` at ``offset``, or ``path=None`` and
    ``offset=-1`` for a range qemu-img must decode (compressed clusters)."""

    start: int
    length: int
    path: str | None = None
    offset: int = 0


def disk_of(volume: Path) -> Path:
    """The file holding a VM volume's disk (the overlay if there is one)."""
    for name in (DISK, IMAGE):
        if (volume / name).is_file():
            return volume / name
    raise BadRequest(f"The VM volume {volume.name!r} holds no disk ({DISK} or {IMAGE})")


def _qemu_img(*args: str) -> str:
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise Internal(f"qemu-img {args[0]} failed: {res.stderr.strip()[:500]}")
    return res.stdout


def plan(disk: Path) -> tuple[int, list[Extent]]:
    """The disk's virtual size and its extents, in guest order."""
    disk = disk.resolve()
    chain: list[dict[str, Any]] = json.loads(_qemu_img(
        "info", "-U", "--backing-chain", "--output=json", str(disk)))
    files: list[str] = []
    for depth, layer in enumerate(chain):
        data = ((layer.get("format-specific") or {}).get("data") or {})
        if data.get("data-file"):
            raise BadRequest(f"The VM disk {disk.name} uses an external data file, which "
                             "backups do not read")
        if layer.get("format") not in ("qcow2", "raw"):
            raise BadRequest(f"The VM disk chain holds a {layer.get('format')!r} image: "
                             "only qcow2 and raw can be exported")
        name = chain[depth - 1].get("full-backing-filename") if depth else str(disk)
        name = name or layer["filename"]
        if not os.path.isabs(name):
            name = os.path.join(os.path.dirname(files[-1] if files else str(disk)), name)
        files.append(name)
    size = int(chain[0]["virtual-size"])
    extents = []
    for e in json.loads(_qemu_img("map", "-U", "--output=json", str(disk))):
        start, length = int(e["start"]), int(e["length"])
        if e.get("zero") or not e.get("data"):
            extents.append(Extent(start, length))
        elif "offset" in e and not e.get("compressed"):
            extents.append(Extent(start, length, files[int(e["depth"])], int(e["offset"])))
        else:
            extents.append(Extent(start, length, None, -1))
    covered = sum(e.length for e in extents)
    if covered != size:
        raise Internal(f"qemu-img map covers {covered} bytes of a {size}-byte disk")
    return size, extents


class RawReader:
    """The raw disk, read front to back (``read(n)``), from the chain's files."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk.resolve()
        self.size, self.extents = plan(self.disk)
        self.i = 0
        self.done = 0  # bytes of extents[i] already read
        self.fds: dict[str, int] = {}
        self.scratch: tempfile.TemporaryDirectory[str] | None = None
        self.piece: tuple[int, int, int] | None = None  # (guest start, length, fd)

    def read(self, n: int) -> bytes:
        while self.i < len(self.extents):
            ext = self.extents[self.i]
            left = ext.length - self.done
            if left <= 0:
                self.i, self.done = self.i + 1, 0
                continue
            want = min(n, left, CHUNK)
            pos = ext.start + self.done
            if ext.path is None and ext.offset == 0:
                data = _ZEROS[:want]
            elif ext.path is not None:
                data = os.pread(self._fd(ext.path), want, ext.offset + self.done)
            else:
                data = self._decoded(pos, want, ext.start + ext.length)
            if len(data) != want:
                raise Internal(f"The VM disk was shorter than qemu-img map said (at {pos})")
            self.done += want
            return data
        return b""

    def _fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def _decoded(self, pos: int, want: int, end: int) -> bytes:
        """Bytes of a compressed range: decoded a bounded piece at a time."""
        if self.piece is None or not (self.piece[0] <= pos < self.piece[0] + self.piece[1]):
            if self.scratch is None:
                self.scratch = tempfile.TemporaryDirectory(prefix="corral-vmdisk-")
            length = min(FALLBACK_PIECE, end - pos)
            out = Path(self.scratch.name) / "piece.raw"
            if self.piece is not None:
                os.close(self.piece[2])
                self.piece = None
            out.unlink(missing_ok=True)
            opts = (f"driver=raw,offset={pos},size={length},file.driver=qcow2,"
                    f"file.file.driver=file,file.file.filename={self.disk}")
            _qemu_img("convert", "-U", "-O", "raw", "--image-opts", opts, str(out))
            self.piece = (pos, length, os.open(out, os.O_RDONLY))
        start, _length, fd = self.piece
        return os.pread(fd, want, pos - start)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.piece is not None:
            os.close(self.piece[2])
            self.piece = None
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None


def write_qcow2(read: Callable[[int], bytes], size: int, dest: Path) -> None:
    """A raw disk of ``size`` bytes from ``read`` as ``dest/root.qcow2`` (standalone).

    Written through qemu-nbd straight into the new qcow2 (:mod:`shared.backup.nbd`);
    without qemu-nbd, staged sparse beside it (all-zero blocks are holes), converted,
    then removed. An incomplete member is a 400, a full pool a 507."""
    target = dest / DISK
    if shutil.which("qemu-nbd"):
        try:
            nbd.write_qcow2(read, size, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return
    write_staged(read, size, dest)


def write_staged(read: Callable[[int], bytes], size: int, dest: Path) -> None:
    """The fallback of :func:`write_qcow2`: a sparse raw file beside the disk, converted."""
    target = dest / DISK
    staged = dest / STAGING
    try:
        with open(staged, "wb") as f:
            left = size
            while left > 0:
                data = read(min(CHUNK, left))
                if not data:
                    raise BadRequest("Invalid backup: the VM disk image ends early")
                if data.count(0) == len(data):
                    f.seek(len(data), os.SEEK_CUR)
                else:
                    f.write(data)
                left -= len(data)
            f.truncate(size)
        res = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                              str(staged), str(target)], capture_output=True, text=True)
        if res.returncode != 0:
            target.unlink(missing_ok=True)
            if "No space" in res.stderr:
                raise CorralError(f"The storage pool is full: {res.stderr.strip()}", 507)
            raise Internal(f"qemu-img convert failed: {res.stderr.strip()[:500]}")
    finally:
        staged.unlink(missing_ok=True)
