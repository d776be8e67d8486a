"""The storage driver interface and the volume logic every backend shares.

A pool is ``(name, driver, config)`` plus the Corral state directory; a driver object is a
thin, stateless view of that tuple (the service keeps pool records in its KV store), so it
can be rebuilt for every call. All methods block; the async service runs them in a thread.

Layout under the pool mount point ``$CORRAL_DIR/storage-pools/<pool>/`` follows LXD:
``images/<fingerprint>``, ``containers/<name>``, ``virtual-machines/<name>``,
``custom/<name>`` and ``<kind-dir>-snapshots/<name>/<snap>``. Backends only implement the
few ``_vol_*`` primitives (make, copy, delete, freeze...) and the pool lifecycle.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shared import faults
from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound

from .util import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    copy_tree,
    parse_size,
    renameat2,
    run,
    validate_name,
)

# API volume type -> directory name under the pool (LXD's names).
KINDS: dict[str, str] = {
    "container": "containers",
    "virtual-machine": "virtual-machines",
    "image": "images",
    "custom": "custom",
}
SNAPSHOT_KINDS = ("container", "virtual-machine", "custom")
TMP_DIR = ".corral-tmp"  # scratch space for restores; same filesystem, so renames are atomic


@dataclass(frozen=True)
class Info:
    """What a backend is and can do (LXD's ``drivers.Info``), read by attribute.

    Why typed: the service decides on these flags (copy or overlay VM disks, what
    ``GET /1.0`` reports); a misspelt key in a dict lookup would silently be "false".
    """

    name: str
    version: str
    remote: bool = False
    optimized_images: bool = False
    snapshots: bool = False
    quotas: bool = False
    preserves_inodes: bool = False
    block_backing: bool = False
    volume_types: tuple[str, ...] = tuple(KINDS)


class Driver:
    """One storage backend. Subclasses set ``name``/``config_keys`` and fill in the hooks."""

    name: ClassVar[str] = ""
    # Whether ``_vol_copy``/``_vol_delete`` are atomic (a btrfs snapshot appears whole or
    # not at all, and read-only subvolumes cannot move to another directory); when not
    # (``cp -a``), snapshots are made and dropped in the tmp dir and moved with a rename.
    atomic_copies: ClassVar[bool] = False
    # key -> validator(value) -> normalised value (raise BadRequest when invalid)
    config_keys: ClassVar[dict[str, Callable[[str], str]]] = {}

    def __init__(self, pool: str, config: Mapping[str, str], corral_dir: Path | str) -> None:
        self.pool = validate_name("storage pool", pool)
        self.corral_dir = Path(corral_dir)
        self.config = self.validate_config(config)

    # ---- description ---------------------------------------------------------------------

    @classmethod
    def info(cls) -> Info:
        """Name, version and capabilities (LXD's driver Info), for /1.0 and the service."""
        raise NotImplementedError

    @classmethod
    def check_host(cls) -> None:
        """Raise BadRequest saying why this host cannot run the driver; no-op when it can."""

    @classmethod
    def validate_config(cls, config: Mapping[str, str]) -> dict[str, str]:
        """Return the config with defaults filled in; BadRequest on unknown/invalid keys.
        ``user.*`` keys are the user's own, stored as given (as LXD); an empty one is unset."""
        user = {k: v for k, v in config.items() if k.startswith("user.")}
        unknown = sorted(set(config) - set(cls.config_keys) - set(user))
        if unknown:
            raise BadRequest(f"Invalid {cls.name} pool config key(s) {', '.join(unknown)}: "
                             f"valid keys are {', '.join(sorted(cls.config_keys))} and user.*")
        for key, value in user.items():
            if not isinstance(value, str):
                raise BadRequest(f"Invalid value for {key!r}: expected a string, "
                                 f"got {type(value).__name__}")
        out: dict[str, str] = {k: v for k, v in user.items() if v}
        for key, check in cls.config_keys.items():
            value = config.get(key, "")
            if not isinstance(value, str):
                raise BadRequest(f"Invalid value for {key!r}: expected a string, "
                                 f"got {type(value).__name__}")
            out[key] = check(value)
        return cls._fill_defaults(out)

    @classmethod
    def _fill_defaults(cls, config: dict[str, str]) -> dict[str, str]:
        """Cross-key checks and defaults; drop empty optional keys."""
        return {k: v for k, v in config.items() if v != ""}

    # ---- pool lifecycle (backend specific) -----------------------------------------------

    @property
    def path(self) -> Path:
        """The pool mount point, ``$CORRAL_DIR/storage-pools/<pool>``."""
        return self.corral_dir / "storage-pools" / self.pool

    def create(self) -> dict[str, str]:
        """Make the pool on disk and mount it; return the config to store (source filled)."""
        raise NotImplementedError

    def mount(self) -> bool:
        """Make the pool usable (idempotent); True when something was mounted now."""
        raise NotImplementedError

    def unmount(self) -> bool:
        """Undo ``mount`` (idempotent); True when something was unmounted now."""
        raise NotImplementedError

    def delete(self) -> None:
        """Remove the pool and everything in it. The service checks usage first."""
        raise NotImplementedError

    def resources(self) -> dict[str, dict[str, int]]:
        """Space and inode usage in the shape of LXD's /1.0/storage-pools/<p>/resources."""
        self._require_ready()
        st = os.statvfs(self.path)
        return {
            "space": {"used": (st.f_blocks - st.f_bfree) * st.f_frsize,
                      "total": st.f_blocks * st.f_frsize},
            "inodes": {"used": st.f_files - st.f_ffree, "total": st.f_files},
        }

    # ---- backend primitives --------------------------------------------------------------

    def _vol_create(self, path: Path) -> None:
        raise NotImplementedError

    def _vol_copy(self, src: Path, dst: Path, readonly: bool = False) -> None:
        """Make ``dst`` a full copy/snapshot of ``src`` (``dst`` must not exist)."""
        raise NotImplementedError

    def _vol_delete(self, path: Path) -> None:
        raise NotImplementedError

    def _vol_freeze(self, path: Path) -> None:
        """Make a volume read-only where the backend can (images)."""

    def _vol_usage(self, path: Path) -> int | None:
        return None

    def _vol_restored(self, old: Path, new: Path) -> None:
        """Carry per-volume settings (quota) from the replaced volume to the restored one."""

    def _vol_quota(self, path: Path, size: int | None) -> None:
        raise BadRequest(f"Storage driver {self.name!r} does not support volume quotas")

    # ---- layout helpers ------------------------------------------------------------------

    def _make_layout(self) -> None:
        """Create the LXD-style directories; 0711 lets unprivileged containers traverse."""
        for sub in [*KINDS.values(), *(f"{KINDS[k]}-snapshots" for k in SNAPSHOT_KINDS)]:
            d = self.path / sub
            d.mkdir(mode=0o711, parents=True, exist_ok=True)

    def _require_ready(self) -> None:
        if not (self.path / KINDS["image"]).is_dir():
            raise Conflict(f"Storage pool {self.pool!r} is not mounted (no {self.path}); "
                           "mount it first")

    @staticmethod
    def _kind_dir(kind: str) -> str:
        if kind not in KINDS:
            raise BadRequest(f"Invalid volume type {kind!r}: expected one of "
                             f"{', '.join(KINDS)}")
        return KINDS[kind]

    def volume_path(self, kind: str, name: str) -> Path:
        """Where a volume lives (whether or not it exists)."""
        return self.path / self._kind_dir(kind) / validate_name("volume", name)

    def _snap_root(self, kind: str, name: str) -> Path:
        if kind not in SNAPSHOT_KINDS:
            raise BadRequest(f"Volumes of type {kind!r} have no snapshots")
        return self.path / f"{self._kind_dir(kind)}-snapshots" / validate_name("volume", name)

    def snapshot_path(self, kind: str, name: str, snap: str) -> Path:
        return self._snap_root(kind, name) / validate_name("snapshot", snap)

    def _existing(self, kind: str, name: str) -> Path:
        self._require_ready()
        path = self.volume_path(kind, name)
        if not path.is_dir():
            raise NotFound(f"Storage volume {kind}/{name} not found in pool {self.pool!r}")
        return path

    def _new(self, kind: str, name: str) -> Path:
        self._require_ready()
        path = self.volume_path(kind, name)
        if os.path.lexists(path):
            raise Conflict(f"Storage volume {kind}/{name} already exists in pool {self.pool!r}")
        return path

    def _tmp_path(self) -> Path:
        tmp = self.path / TMP_DIR
        tmp.mkdir(mode=0o700, exist_ok=True)
        return tmp / uuid.uuid4().hex[:12]

    def _undo(self, path: Path) -> None:
        """Best-effort removal of a half-made volume; the original error wins."""
        if os.path.lexists(path):
            try:
                self._vol_delete(path)
            except (CorralError, OSError):
                pass

    # ---- image volumes -------------------------------------------------------------------

    def create_image_volume(self, fingerprint: str, fill: Callable[[Path], None]) -> Path:
        """Make ``images/<fp>``, let ``fill(path)`` unpack into it, then make it read-only.

        If ``fill`` fails the half-made volume is removed; CorralErrors from ``fill`` pass
        through, anything else becomes Internal.
        """
        path = self._new("image", fingerprint)
        self._vol_create(path)
        try:
            fill(path)
            self._vol_freeze(path)
        except CorralError:
            self._undo(path)
            raise
        except BaseException as exc:
            self._undo(path)
            if not isinstance(exc, Exception):
                raise
            raise Internal(f"Filling image volume {fingerprint} failed: {exc}") from exc
        return path

    def has_image_volume(self, fingerprint: str) -> bool:
        self._require_ready()
        return self.volume_path("image", fingerprint).is_dir()

    def delete_image_volume(self, fingerprint: str) -> None:
        self.delete_volume("image", fingerprint)

    # ---- instance and custom volumes -----------------------------------------------------

    def create_instance_from_image(self, name: str, fingerprint: str,
                                   kind: str = "container") -> Path:
        """A writable copy (btrfs: snapshot) of an image volume as an instance root."""
        src = self._existing("image", fingerprint)
        dst = self._new(kind, name)
        try:
            self._vol_copy(src, dst)
        except BaseException:
            self._undo(dst)
            raise
        return dst

    def create_empty_volume(self, kind: str, name: str, size: str | None = None) -> Path:
        """An empty volume, optionally with a quota (e.g. "10GiB")."""
        path = self._new(kind, name)
        self._vol_create(path)
        if size:
            try:
                self.set_quota(kind, name, size)
            except BaseException:
                self._undo(path)
                raise
        return path

    def delete_volume(self, kind: str, name: str) -> None:
        """Delete a volume and its snapshots; NotFound when it does not exist."""
        path = self._existing(kind, name)
        if kind in SNAPSHOT_KINDS:
            root = self._snap_root(kind, name)
            if root.is_dir():
                for snap in sorted(root.iterdir()):
                    self._vol_delete(snap)
                root.rmdir()
        self._vol_delete(path)

    def rename_volume(self, kind: str, old: str, new: str) -> Path:
        """Rename a volume (and its snapshot directory); Conflict when ``new`` exists."""
        src = self._existing(kind, old)
        dst = self._new(kind, new)
        os.rename(src, dst)
        if kind in SNAPSHOT_KINDS and self._snap_root(kind, old).is_dir():
            os.rename(self._snap_root(kind, old), self._snap_root(kind, new))
        return dst

    def volume_usage(self, kind: str, name: str, snapshot: str | None = None) -> int | None:
        """Bytes used (of the volume, or of its ``snapshot``: what only it holds), or None
        when the backend cannot tell cheaply (no walk, no process)."""
        if snapshot:
            return self._vol_usage(self._existing_snapshot(kind, name, snapshot))
        return self._vol_usage(self._existing(kind, name))

    def set_quota(self, kind: str, name: str, size: str | None) -> None:
        """Limit a volume's size ("" or None or "0" removes the limit)."""
        limit = parse_size(size, "size") if size else 0
        self._vol_quota(self._existing(kind, name), limit or None)

    def list_volumes(self) -> list[tuple[str, str]]:
        """All volumes as (kind, name), read from the layout."""
        self._require_ready()
        out = []
        for kind, sub in KINDS.items():
            for entry in sorted(os.scandir(self.path / sub), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    out.append((kind, entry.name))
        return out

    # ---- snapshots -----------------------------------------------------------------------
    #
    # Every change is made aside in the pool's tmp dir and moved into place with one
    # rename, so a process killed at any instant leaves the volume and its snapshots whole
    # (what it was making stays in the tmp dir, which :meth:`clean_tmp` empties at start).

    def list_snapshots(self, kind: str, name: str) -> list[str]:
        root = self._snap_root(kind, name)
        self._existing(kind, name)
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []

    def _existing_snapshot(self, kind: str, name: str, snap: str) -> Path:
        path = self.snapshot_path(kind, name, snap)  # bad arguments before missing volume
        self._existing(kind, name)
        if not path.is_dir():
            raise NotFound(f"Storage volume snapshot {kind}/{name}/{snap} not found in pool "
                           f"{self.pool!r}")
        return path

    def _place(self, made: Path, dst: Path, what: str) -> None:
        """Move ``made`` (in the tmp dir) to ``dst`` unless that exists (409, undone)."""
        dst.parent.mkdir(mode=0o711, exist_ok=True)
        try:
            renameat2(made, dst, RENAME_NOREPLACE)
        except FileExistsError:
            self._undo(made)
            raise Conflict(f"{what} already exists") from None
        except BaseException:
            self._undo(made)
            raise

    def create_snapshot(self, kind: str, name: str, snap: str) -> Path:
        """A read-only (btrfs) or copied (dir, reflink where possible) point-in-time copy."""
        dst = self.snapshot_path(kind, name, snap)
        src = self._existing(kind, name)
        what = f"Storage volume snapshot {kind}/{name}/{snap}"
        if os.path.lexists(dst):
            raise Conflict(f"{what} already exists")
        if self.atomic_copies:  # appears whole or not at all, where it belongs
            dst.parent.mkdir(mode=0o711, exist_ok=True)
            self._vol_copy(src, dst, readonly=True)
            return dst
        made = self._tmp_path()
        try:
            self._vol_copy(src, made, readonly=True)
        except BaseException:
            self._undo(made)
            raise
        faults.point("storage:snapshot_mid")
        self._place(made, dst, what)
        return dst

    def delete_snapshot(self, kind: str, name: str, snap: str) -> None:
        """Moved to the tmp dir first (one rename), then deleted at leisure."""
        path = self._existing_snapshot(kind, name, snap)
        gone = path
        if not self.atomic_copies:
            gone = self._tmp_path()
            os.rename(path, gone)
        try:
            self._vol_delete(gone)
        finally:
            try:
                path.parent.rmdir()  # the last snapshot: drop the volume's snapshot dir
            except OSError:
                pass

    def rename_snapshot(self, kind: str, name: str, snap: str, new: str) -> Path:
        dst = self.snapshot_path(kind, name, new)
        src = self._existing_snapshot(kind, name, snap)
        try:
            renameat2(src, dst, RENAME_NOREPLACE)
        except FileExistsError:
            raise Conflict(f"Storage volume snapshot {kind}/{name}/{new} already exists"
                           ) from None
        return dst

    def restore_snapshot(self, kind: str, name: str, snap: str) -> None:
        """Replace a volume's content by a snapshot's: a fresh writable copy is made in the
        tmp dir, given the volume's quota, then swapped with the volume in one
        ``renameat2(RENAME_EXCHANGE)``; the old content, now in the tmp dir, is deleted."""
        snap_path = self._existing_snapshot(kind, name, snap)
        path = self._existing(kind, name)
        fresh = self._tmp_path()
        try:
            self._vol_copy(snap_path, fresh)
            self._vol_restored(path, fresh)
            faults.point("storage:restore_mid")
            renameat2(fresh, path, RENAME_EXCHANGE)
        except BaseException:
            self._undo(fresh)
            raise
        faults.point("storage:restore_swapped")
        self._undo(fresh)  # the old content; what stays is swept from tmp at start

    # ---- copies --------------------------------------------------------------------------

    def copy_in(self, kind: str, name: str, src: Driver, src_name: str,
                src_snapshot: str | None, snapshots: list[str], refresh: bool = False,
                backing: Path | None = None) -> Path:
        """Make volume ``name`` a copy of ``src``'s volume ``src_name`` (or of its snapshot
        ``src_snapshot``), with the source snapshots ``snapshots`` (oldest first) copied
        along under the same names; ``src`` may be this pool or another.

        ``refresh``: the volume exists; the snapshots it lacks are added, then its content
        is replaced atomically (as a restore). Otherwise it must not exist, and a failure
        leaves parts behind for the caller's journal to drop (``drop_volume``).
        ``backing``: the image disk a dir pool's VM overlay (``root.qcow2``) backs onto; a
        copy to another pool gets its own copy of it (flattened, standalone).

        Each snapshot appears whole or not at all (made in the tmp dir, then moved or
        snapshotted into place); the copy's snapshots are read-only where the driver can.
        """
        if src_snapshot is not None:
            root = src.snapshot_path(kind, src_name, src_snapshot)
            src._existing(kind, src_name)
            if not root.is_dir():
                raise NotFound(f"Storage volume snapshot {kind}/{src_name}/{src_snapshot} "
                               f"not found in pool {src.pool!r}")
        else:
            root = src._existing(kind, src_name)
        for s in snapshots:
            if not src.snapshot_path(kind, src_name, s).is_dir():
                raise NotFound(f"Storage volume snapshot {kind}/{src_name}/{s} not found in "
                               f"pool {src.pool!r}")
        dst = self._existing(kind, name) if refresh else self._new(kind, name)
        have = set(self.list_snapshots(kind, name)) if refresh else set()
        local = src.pool == self.pool
        work = self._tmp_path()
        work.mkdir(mode=0o700)
        try:
            parent = None
            for i, s in enumerate(x for x in snapshots if x not in have):
                src_snap = src.snapshot_path(kind, src_name, s)
                dst_snap = self.snapshot_path(kind, name, s)
                dst_snap.parent.mkdir(mode=0o711, exist_ok=True)
                if os.path.lexists(dst_snap):
                    raise Conflict(f"Storage volume snapshot {kind}/{name}/{s} already exists")
                if local and self.atomic_copies:
                    self._vol_copy(src_snap, dst_snap, readonly=True)
                else:
                    made = self._import(src, src_snap, work / f"s{i}", parent, True, backing)
                    self._adopt(made, dst_snap, readonly=True)
                parent = src_snap
                faults.point("storage:copy_mid")
            if local and not refresh:
                self._vol_copy(root, dst)
            else:
                made = self._import(src, root, work / "v", parent, src_snapshot is not None,
                                    backing, writable=True)
                if refresh:
                    self._vol_restored(dst, made)
                    renameat2(made, dst, RENAME_EXCHANGE)
                else:
                    self._adopt(made, dst, readonly=False)
            if not refresh:  # the source's quota (a snapshot does not carry a qgroup limit)
                self._vol_restored(src.volume_path(kind, src_name), dst)
            faults.point("storage:copy_placed")
        finally:
            self._undo(work)
        return dst

    def _import(self, src: Driver, path: Path, dest: Path, parent: Path | None,
                src_readonly: bool, backing: Path | None, writable: bool = False) -> Path:
        """A copy of ``path`` (a volume or snapshot of ``src``) at or under ``dest`` in this
        pool's tmp dir; returns where it is (writable when ``writable``). Generic: a
        driver copy in the same pool, else a new volume filled with ``cp -a``. ``parent``
        (a source snapshot imported just before) and ``src_readonly`` let a driver send
        increments (btrfs)."""
        if src.pool == self.pool:
            self._vol_copy(path, dest, readonly=not writable)
            return dest
        self._vol_create(dest)
        copy_tree(f"{path}/.", dest)
        if backing is not None:
            flatten_overlay(dest, backing)
        return dest

    def _adopt(self, made: Path, dst: Path, readonly: bool) -> None:
        """Put ``made`` (from :meth:`_import`) at ``dst`` in one step; 409 if it exists."""
        try:
            renameat2(made, dst, RENAME_NOREPLACE)
        except FileExistsError:
            raise Conflict(f"{dst.name!r} already exists in pool {self.pool!r}") from None

    # ---- scratch space -------------------------------------------------------------------

    def clean_tmp(self) -> list[str]:
        """Empty the pool's tmp dir (at service start: all of it is what a killed process
        was making or dropping); returns the names removed."""
        tmp = self.path / TMP_DIR
        if not tmp.is_dir():
            return []
        gone = []
        for entry in sorted(tmp.iterdir()):
            try:
                self._vol_delete(entry)
                gone.append(entry.name)
            except (CorralError, OSError):
                pass
        return gone

    def drop_volume(self, kind: str, name: str) -> None:
        """Remove whatever exists of a volume (its snapshots, the volume), no NotFound:
        the undo of a copy or create that died between its steps."""
        self._require_ready()
        if kind in SNAPSHOT_KINDS:
            root = self._snap_root(kind, name)
            if root.is_dir():
                for snap in sorted(root.iterdir()):
                    self._vol_delete(snap)
                root.rmdir()
        if os.path.lexists(self.volume_path(kind, name)):
            self._vol_delete(self.volume_path(kind, name))


def flatten_overlay(vol: Path, backing: Path) -> None:
    """Make a VM volume's ``root.qcow2`` (an overlay on an image volume's disk, as a dir
    pool makes them) standalone: the image disk copied beside it as ``rootfs.img`` and
    the overlay pointed at that relative name (the layout the qemu driver expects)."""
    disk = vol / "root.qcow2"
    if not disk.is_file() or (vol / "rootfs.img").exists():
        return
    if not backing.is_file():
        raise NotFound(f"The image disk {backing} the VM volume backs onto is missing")
    run("cp", "--reflink=auto", backing, vol / "rootfs.img", what="copy the image disk")
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "rootfs.img", disk,
        what="point the VM disk at its own image copy")


def remove_tree(path: Path) -> None:
    """rmtree that also handles a plain file or symlink, and ignores a missing path."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
