"""The ``btrfs`` driver: volumes are subvolumes, instance roots are snapshots of images.

``source`` decides the backing, read from the disk each time so the driver stays
stateless: empty at create -> a sparse loop file ``$CORRAL_DIR/disks/<pool>.img`` (and
``source`` is set to it, as LXD does); a regular file -> that loop file; a block device
-> formatted at create, mounted; a directory -> a subvolume on an existing btrfs,
bind-mounted at the pool path.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound

from . import btrfs_util as bu
from .base import KINDS, SNAPSHOT_KINDS, TMP_DIR, Driver, Info
from .dir import check_source
from .util import is_mounted, loop_devices_for, parse_size, run

DEFAULT_SIZE = "5GiB"
MIN_SIZE = 128 * 2**20  # mkfs.btrfs refuses devices under ~109 MiB
DEFAULT_MOUNT_OPTIONS = "user_subvol_rm_allowed"
_OPTS_RE = re.compile(r"^[A-Za-z0-9_=.,:@+-]+$")


def _check_size(value: str) -> str:
    if value and parse_size(value) < MIN_SIZE:
        raise BadRequest(f"Invalid value {value!r} for 'size': a btrfs pool needs at least "
                         "128MiB")
    return value.strip()


def _check_opts(value: str) -> str:
    if value and not _OPTS_RE.match(value):
        raise BadRequest(f"Invalid value {value!r} for 'btrfs.mount_options': expected a "
                         "comma-separated list of mount options")
    return value


@functools.cache
def _progs_version() -> str:
    try:
        out = run("btrfs", "--version")
    except CorralError:
        return ""
    m = re.search(r"v?(\d[\w.]*)", out)
    return m.group(1) if m else out.strip()


class BtrfsDriver(Driver):
    name = "btrfs"
    atomic_copies = True
    config_keys = {"source": check_source, "size": _check_size,
                   "btrfs.mount_options": _check_opts}

    @classmethod
    def info(cls) -> Info:
        return Info(name=cls.name, version=_progs_version(), optimized_images=True,
                    snapshots=True, quotas=True, preserves_inodes=True)

    @classmethod
    def check_host(cls) -> None:
        with open("/proc/filesystems", encoding="utf-8") as fh:
            if "btrfs" not in fh.read().split():
                raise BadRequest("The kernel has no btrfs support (not in /proc/filesystems)")
        for tool in ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount"):
            if shutil.which(tool) is None:
                raise BadRequest(f"{tool!r} is not installed; install Debian 'btrfs-progs' "
                                 "and 'util-linux'")

    @classmethod
    def _fill_defaults(cls, config: dict[str, str]) -> dict[str, str]:
        src = config["source"]
        if config["size"] and src and not os.path.isfile(src):
            raise BadRequest("'size' only applies to pools backed by a loop file (empty "
                             "source); a device or directory has the size it has")
        if not src and not config["size"]:
            config["size"] = DEFAULT_SIZE
        if not config["btrfs.mount_options"]:
            config["btrfs.mount_options"] = DEFAULT_MOUNT_OPTIONS
        return super()._fill_defaults(config)

    @property
    def loop_file(self) -> Path:
        return self.corral_dir / "disks" / f"{self.pool}.img"

    # ---- pool lifecycle ------------------------------------------------------------------

    def create(self) -> dict[str, str]:
        """Format/mount per ``source``; any failure undoes every step already done."""
        self.check_host()
        if self.path.exists() and (is_mounted(self.path) or any(self.path.iterdir())):
            raise Conflict(f"Storage pool directory {self.path} already exists and is in use")
        undo: list[Callable[[], None]] = []
        config = dict(self.config)
        try:
            src = self._prepare_source(config, undo)
            self.config = config  # source now names what was made; unmount needs it
            if not self.path.exists():
                self.path.mkdir(mode=0o711, parents=True)
                undo.append(lambda: os.rmdir(self.path))
            self._mount_source(src)
            undo.append(self.unmount)
            self._make_layout()
            self._enable_quotas()
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except (CorralError, OSError):
                    pass
            raise
        return config

    def _prepare_source(self, config: dict[str, str],
                        undo: list[Callable[[], None]]) -> Path:
        """Make the filesystem the pool will mount; return what to mount."""
        src = Path(config["source"]) if config.get("source") else None
        if src is None:
            src = self.loop_file
            if src.exists():
                raise Conflict(f"Loop file {src} already exists; delete it or use it as source")
            src.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(src, "xb") as fh:
                undo.append(src.unlink)
                fh.truncate(parse_size(config["size"]))
            run("mkfs.btrfs", "-q", "-f", "-L", self.pool, src, what="format loop file")
            config["source"] = str(src)
        elif src.is_block_device():
            run("mkfs.btrfs", "-q", "-f", "-L", self.pool, src, error=BadRequest,
                what=f"format {src}")
        elif src.is_dir():
            if bu.fsid(src) is None:
                raise BadRequest(f"Existing path {src} is not on a btrfs filesystem")
            if any(src.iterdir()):
                raise BadRequest(f"Source path {src} isn't empty")
        elif not src.exists():
            if bu.fsid(src.parent) is None:
                raise BadRequest(f"Source {src} does not exist and its parent is not on btrfs")
            run("btrfs", "subvolume", "create", src, what="create pool subvolume")
            undo.append(lambda: self._delete_tree(src))
        else:
            raise BadRequest(f"Source {src} is a regular file; leave 'source' empty to make a "
                             "new loop file, or give a block device or btrfs directory")
        return src

    def _mount_source(self, src: Path) -> None:
        opts = self.config["btrfs.mount_options"]
        if src.is_dir():
            run("mount", "--bind", src, self.path, what="bind-mount storage pool")
        elif src.is_block_device():
            run("mount", "-t", "btrfs", "-o", opts, src, self.path, what="mount storage pool")
        else:  # mount(8) sets LO_FLAGS_AUTOCLEAR: the loop device goes away on umount
            run("mount", "-t", "btrfs", "-o", f"loop,{opts}", src, self.path,
                what="mount storage pool")

    def mount(self) -> bool:
        """Mount if needed (e.g. after a restart: re-attach the loop file)."""
        if is_mounted(self.path):
            self._enable_quotas()
            return False
        src = Path(self.config.get("source") or self.loop_file)
        if not src.exists():
            raise NotFound(f"Source {src} of storage pool {self.pool!r} is missing")
        self.path.mkdir(mode=0o711, parents=True, exist_ok=True)
        self._mount_source(src)
        self._enable_quotas()
        return True

    def _enable_quotas(self) -> None:
        """Turn btrfs quotas on (once per filesystem): the qgroups are what an instance's
        disk usage is read from (``lxc list -c D``, ``lxc info``), as LXD does. A pool
        that is a subvolume of a shared btrfs gets them too: the same filesystem-wide
        switch LXD flips. Failure is not fatal: usage is then simply not reported."""
        if bu.qgroup_dir(self.path) is not None:
            return
        try:
            run("btrfs", "quota", "enable", self.path, what="enable btrfs quotas")
            run("btrfs", "quota", "rescan", "-w", self.path, what="rescan btrfs quotas")
        except CorralError:
            pass

    def unmount(self) -> bool:
        """Unmount and make sure no loop device still holds the backing file."""
        done = False
        if is_mounted(self.path):
            run("umount", self.path, error=Conflict, what=f"unmount storage pool {self.pool!r}")
            done = True
        src = Path(self.config.get("source") or self.loop_file)
        if src.is_file():
            for dev in loop_devices_for(src):
                run("losetup", "-d", dev, what="detach loop device")
        return done

    def delete(self) -> None:
        """Unmount, then drop the loop file we made or the source subvolume."""
        src = Path(self.config.get("source") or self.loop_file)
        if src.is_dir():  # the data lives in a shared filesystem: remove ours only
            self.mount()
            for sub in [*KINDS.values(), *(f"{KINDS[k]}-snapshots" for k in SNAPSHOT_KINDS),
                        TMP_DIR]:
                if (self.path / sub).exists():
                    self._delete_tree(self.path / sub)
        self.unmount()
        if src.is_file() and src.parent == self.corral_dir / "disks":
            src.unlink()
        elif src.is_dir() and bu.is_subvolume(src) and not is_mounted(src):
            self._delete_tree(src)
        if self.path.exists():
            self.path.rmdir()

    # ---- volume primitives ---------------------------------------------------------------

    def _vol_create(self, path: Path) -> None:
        try:
            bu.create_subvolume(path)
        except OSError:  # the command says why in words
            run("btrfs", "subvolume", "create", path, what="create volume")

    def _vol_copy(self, src: Path, dst: Path, readonly: bool = False) -> None:
        try:
            bu.snapshot(src, dst, readonly)
        except OSError:
            if os.path.lexists(dst):
                raise
            args = ["-r"] if readonly else []
            run("btrfs", "subvolume", "snapshot", *args, src, dst, what="snapshot volume")

    def _import(self, src: Driver, path: Path, dest: Path, parent: Path | None,
                src_readonly: bool, backing: Path | None, writable: bool = False) -> Path:
        """From another btrfs pool: ``btrfs send | btrfs receive`` (``-p parent``: only
        what changed since the snapshot sent before), which keeps the extents shared
        between successive snapshots. A live source volume is sent through a read-only
        snapshot of it. Anything else: the generic copy."""
        if src.pool == self.pool or not isinstance(src, BtrfsDriver):
            return super()._import(src, path, dest, parent, src_readonly, backing, writable)
        dest.mkdir(mode=0o700)
        frozen = None
        if not src_readonly:
            frozen = src._tmp_path()
            src._vol_copy(path, frozen, readonly=True)
        try:
            send_receive(frozen or path, dest, parent)
        finally:
            if frozen is not None:
                src._undo(frozen)
        received = dest / (frozen or path).name
        if not writable:
            return received
        out = dest.with_name(dest.name + "-rw")
        self._vol_copy(received, out)
        return out

    def _adopt(self, made: Path, dst: Path, readonly: bool) -> None:
        """A snapshot of ``made`` at ``dst``: appears whole or not at all, and read-only
        subvolumes cannot be renamed into another directory (EROFS on '..')."""
        if os.path.lexists(dst):
            raise Conflict(f"{dst.name!r} already exists in pool {self.pool!r}")
        self._vol_copy(made, dst, readonly=readonly)

    def _vol_freeze(self, path: Path) -> None:
        run("btrfs", "property", "set", "-ts", path, "ro", "true", what="make volume read-only")

    def _vol_delete(self, path: Path) -> None:
        if bu.is_subvolume(path):
            try:  # fast path: no nested subvolumes
                bu.delete_subvolume(path)
                return
            except OSError:
                pass
        self._delete_tree(path)

    def _delete_tree(self, path: Path) -> None:
        """Delete a subvolume or directory including nested subvolumes (LXC makes some)."""
        sub = bu.is_subvolume(path)
        if sub:  # entries of a read-only subvolume cannot be unlinked; -f: a received one
            run("btrfs", "property", "set", "-f", "-ts", path, "ro", "false")
        for nested in _nested_subvolumes(path):
            self._vol_delete(nested)  # a read-only snapshot goes without being flipped
        if sub:
            run("btrfs", "subvolume", "delete", path, what="delete volume")
        else:
            shutil.rmtree(path)

    def _vol_usage(self, path: Path) -> int | None:
        """LXD's figure: the subvolume's exclusive bytes (sysfs; ``btrfs qgroup show`` only
        when the kernel lacks the sysfs qgroup files)."""
        found = bu.exclusive_bytes(path)
        if found is not None or bu.fsid(path) is None:
            return found
        if (Path("/sys/fs/btrfs") / str(bu.fsid(path))).is_dir():
            return None  # sysfs is there but quotas are off
        try:
            parsed = bu.parse_qgroup_show(run("btrfs", "qgroup", "show", "-e", "-f", "--raw",
                                              path))
        except CorralError:
            return None
        return parsed[1] if parsed else None

    def _vol_restored(self, old: Path, new: Path) -> None:
        limit = bu.referenced_limit(old)
        if limit:
            self._vol_quota(new, limit)

    def _vol_quota(self, path: Path, size: int | None) -> None:
        """Limit referenced bytes with a qgroup; quotas are enabled on first use."""
        if bu.qgroup_dir(path) is None:
            run("btrfs", "quota", "enable", self.path, what="enable btrfs quotas")
            run("btrfs", "quota", "rescan", "-w", self.path, what="rescan btrfs quotas")
        run("btrfs", "qgroup", "limit", str(size) if size else "none", path,
            what="set volume quota")


def send_receive(src: Path, dest_dir: Path, parent: Path | None = None) -> None:
    """``btrfs send [-p parent] src | btrfs receive dest_dir`` (read-only ``src`` and
    ``parent``); Internal with both commands' errors when either fails."""
    send_cmd = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(src)]
    with tempfile.TemporaryFile() as send_err:
        sender = subprocess.Popen(send_cmd, stdout=subprocess.PIPE, stderr=send_err)
        try:
            recv = subprocess.run(["btrfs", "receive", "-q", str(dest_dir)],
                                  stdin=sender.stdout, capture_output=True, text=True,
                                  check=False)
        finally:
            assert sender.stdout is not None
            sender.stdout.close()
            sender.wait()
        send_err.seek(0)
        errors = send_err.read().decode(errors="replace").strip()
    if sender.returncode != 0 or recv.returncode != 0:
        detail = errors or recv.stderr.strip() or \
            f"exit codes {sender.returncode}/{recv.returncode}"
        raise Internal(f"btrfs send/receive of {src} failed: {detail}")


def _nested_subvolumes(path: Path) -> list[Path]:
    """Subvolume roots below ``path`` (not descending into them), found by inode 256."""
    found = []
    for root, dirs, _files in os.walk(path):
        for d in list(dirs):
            p = Path(root) / d
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_ino == bu.FIRST_FREE_OBJECTID:
                found.append(p)
                dirs.remove(d)
    return found
