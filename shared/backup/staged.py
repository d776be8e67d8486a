"""A backup laid out as a directory (``index.yaml``, ``backup/...``) instead of a tarball.

A migration target receives the instance's trees (rsync, btrfs streams, raw disks) into a
staging directory of its own node, laid out as LXD's backup tarball. Packing that into a
tarball on disk, uploading it to the ``transfers`` object store and reading it back twice
(index, then data) was half the time of a cold move between cluster members. Instead the
importer reads the directory itself: :func:`stream` packs it into a pipe on the fly, so
the one importer (``storage/backups.py`` ``_unpack``: its checks, its order, its
whole-or-nothing undo) serves both a tarball and a staged directory.

Only directories under the node's own ``<CORRAL_DIR>/migration/`` are taken (:func:`
checked`): the path comes over the bus, and neither service reads trees elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
from pathlib import Path
from typing import IO, Callable, Iterator

from shared.errors import BadRequest

from . import layout

STAGING = "migration"


def checked(corral_dir: Path, directory: str) -> Path:
    """``directory`` when it is a staging directory of this node, else 400."""
    root = (Path(corral_dir) / STAGING).resolve()
    path = Path(directory).resolve()
    if root not in path.parents or not (path / layout.INDEX).is_file():
        raise BadRequest(f"Invalid backup directory {directory!r}: not a staged backup "
                         f"under {root}")
    return path


def read_index(stage: Path) -> bytes:
    return (stage / layout.INDEX).read_bytes()


def write_tar(stage: Path, out: IO[bytes], kind: str, snapshots: list[str]) -> None:
    """The staged tree as a tarball stream, in LXD's order: index first, snapshots oldest
    first, the volume last (a send stream is received against the one before it; a
    snapshot is sealed read-only when the next part begins), each tree before its ``.img``
    or as its ``.bin``; not the directory's sorted order, which would put
    ``container.bin`` first."""
    base = stage / layout.PREFIX
    parts = [base / layout.snapshots_dir(kind) / s for s in snapshots]
    parts.append(base / layout.volume_dir(kind))
    with tarfile.open(fileobj=out, mode="w|", bufsize=1 << 20,
                      format=tarfile.PAX_FORMAT) as tar:
        tar.add(stage / layout.INDEX, arcname=layout.INDEX)
        for part in parts:
            for path in (part, part.with_name(f"{part.name}.img"),
                         part.with_name(f"{part.name}.bin")):
                if os.path.lexists(path):
                    tar.add(path, arcname=str(path.relative_to(stage)),
                            filter=_with_xattrs(stage))


def _with_xattrs(stage: Path) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    """Each member's extended attributes as pax ``SCHILY.xattr.*`` headers (GNU tar's and
    LXD's way, which the importer reads): tarfile writes none by itself, and rsync
    received them (``--xattrs``)."""
    def add(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if info.issym() or info.islnk():
            return info
        path = stage / info.name
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return info
        for name in names:
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            info.pax_headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8",
                                                                      "surrogateescape")
        return info
    return add


@contextlib.contextmanager
def stream(stage: Path, kind: str, snapshots: list[str]) -> Iterator[io.RawIOBase]:
    """The staged tree as a readable tarball (a pipe filled by a thread): what the
    importer reads from the object store otherwise. Leaving early (a refused member)
    closes the pipe, which ends the writer (EPIPE)."""
    rfd, wfd = os.pipe()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            with open(wfd, "wb", buffering=0) as out:
                write_tar(stage, out, kind, snapshots)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # noqa: BLE001 - said to the reader below
            failed.append(exc)

    writer = threading.Thread(target=write, name="staged-tar", daemon=True)
    writer.start()
    src = io.FileIO(rfd, "rb")
    try:
        yield src
    finally:
        src.close()
        writer.join()
    if failed:
        raise failed[0]
