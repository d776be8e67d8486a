"""Changing a pool's config in place: which keys may change, and how the host follows.

As LXD: ``source`` never changes (it names the data); btrfs ``btrfs.mount_options``
triggers a remount, and ``size`` grows a loop file (never shrinks: btrfs would have to
move data first, and a wrong guess loses it). Everything else is a 400 that names the
keys which can change.

A remount must leave the pool with exactly the new options, but both layers keep what a
remount does not mention: btrfs starts from the options it has (``autodefrag`` stays on
unless ``noautodefrag`` is given) and libmount does not clear ``noatime`` for
``relatime``. So the remount is a mount(2) of its own (as LXD's): every VFS flag is
given (absent ones are cleared), and each btrfs option that was dropped is turned off by
its opposite; a dropped option btrfs cannot turn off while mounted is refused (400).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from shared.errors import BadRequest

from .drivers import Driver
from .drivers.util import loop_devices_for, parse_size, run

FIXED = ("source",)
LIVE: dict[str, set[str]] = {"btrfs": {"btrfs.mount_options", "size"}, "dir": set()}


def merge_config(cls: type[Driver], current: dict[str, str], given: dict[str, str],
                 patch: bool) -> dict[str, str]:
    """The config a PUT (replace) or PATCH (merge) asks for, validated; 400 when a key
    that cannot change would change. Keys a PUT leaves out that cannot be unset keep
    their value (the stock client's ``lxc storage edit`` sends them back anyway)."""
    wanted = {**current, **given} if patch else dict(given)
    for k in FIXED:
        if k in wanted and wanted[k] != current.get(k, ""):
            raise BadRequest(f"The {k!r} of a storage pool cannot be changed (it is "
                             f"{current.get(k, '')!r}); create a new pool instead")
        if k in current:
            wanted[k] = current[k]
    if "size" in current and "size" not in wanted:
        wanted["size"] = current["size"]
    wanted = cls.validate_config(wanted)
    changed = sorted(k for k in set(wanted) | set(current) if wanted.get(k) != current.get(k))
    bad = [k for k in changed if k not in LIVE.get(cls.name, set())
           and not k.startswith("user.")]  # the user's own keys: stored, nothing to apply
    if bad:
        live = ", ".join(sorted(LIVE.get(cls.name, ()))) or "none"
        raise BadRequest(f"Config key(s) {', '.join(bad)} of a {cls.name} pool cannot be "
                         f"changed after creation (keys that can: {live})")
    if "size" in changed:
        _check_grow(current, wanted)
    if "btrfs.mount_options" in changed:
        remount_options(current.get("btrfs.mount_options", ""),
                        wanted.get("btrfs.mount_options", ""))
    return wanted


# mount(2)'s per-mount and superblock flags by option name; their opposites ("rw",
# "dev", "exec", "suid", "atime"...) are the flag's absence.
MS_REMOUNT = 32
VFS_FLAGS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "dirsync": 128,
             "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
             "strictatime": 1 << 24, "lazytime": 1 << 25}
VFS_CLEAR = {"rw", "suid", "dev", "exec", "async", "atime", "diratime", "nolazytime",
             "defaults"}
ATIME = {"noatime", "relatime", "strictatime"}
# What turns a btrfs option off again on a remount (None: off is the default, nothing to
# say; nodatacow set nodatasum too). A dropped option missing here (user_subvol_rm_allowed,
# ssd, discard, commit...) has no opposite or a default that depends on the device: it is
# refused.
BTRFS_OFF: dict[str, str | None] = {
    "autodefrag": "noautodefrag", "noautodefrag": None,
    "compress": "compress=no", "compress-force": "compress=no",
    "flushoncommit": "noflushoncommit", "noflushoncommit": None,
    "enospc_debug": "noenospc_debug", "noenospc_debug": None,
    "nodatacow": "datacow,datasum", "datacow": None, "nodatasum": "datasum", "datasum": None,
    "nobarrier": "barrier", "barrier": None, "notreelog": "treelog", "treelog": None,
    "noacl": "acl", "acl": None}


def _opt_name(opt: str) -> str:
    return opt.partition("=")[0]


def remount_options(current: str, wanted: str) -> tuple[int, str]:
    """The mount(2) flags and btrfs data of a remount from ``current`` to ``wanted``
    (``btrfs.mount_options`` values): the wanted options, the VFS flags all given, and
    the dropped btrfs options turned off. 400 for a dropped option btrfs cannot undo."""
    want = [o for o in wanted.split(",") if o]
    flags = MS_REMOUNT
    data: list[str] = []
    for o in want:
        if o in VFS_FLAGS:
            flags |= VFS_FLAGS[o]
        elif o not in VFS_CLEAR:
            data.append(o)
    if not ATIME & set(want):
        flags |= VFS_FLAGS["relatime"]  # the kernel's default, not "keep what it was"
    given = {_opt_name(o) for o in want}
    stuck = []
    for o in dict.fromkeys(o for o in current.split(",") if o):
        name = _opt_name(o)
        if name in given or o in VFS_FLAGS or o in VFS_CLEAR:
            continue
        if name not in BTRFS_OFF:
            stuck.append(o)
        else:  # nodatacow implies nodatasum: both come back
            data += [off for off in (BTRFS_OFF[name] or "").split(",")
                     if off and _opt_name(off) not in given]
    if stuck:
        raise BadRequest(f"btrfs cannot turn off mount option(s) {', '.join(stuck)} of a "
                         "mounted pool: keep them in btrfs.mount_options (e.g. "
                         f"{','.join([*stuck, *want])})")
    return flags, ",".join(dict.fromkeys(data))


def _remount(path: str, flags: int, data: str) -> None:
    """mount(2) with MS_REMOUNT: the flags replace the mount's, ``data`` goes to btrfs."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", path.encode(), None, flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise BadRequest(f"Failed to apply mount options to {path}: {os.strerror(err)} "
                         "(the kernel's log says which option btrfs refused)")


def _loop_file(config: dict[str, str]) -> Path | None:
    src = config.get("source", "")
    return Path(src) if src and os.path.isfile(src) else None


def _check_grow(current: dict[str, str], wanted: dict[str, str]) -> None:
    if _loop_file(current) is None:
        raise BadRequest("'size' can only change on a pool backed by a loop file")
    old, new = parse_size(current["size"]), parse_size(wanted["size"])
    if new < old:
        raise BadRequest(f"Cannot shrink storage pool from {current['size']} to "
                         f"{wanted['size']}: only growing is supported")


def apply(drv: Driver, current: dict[str, str], wanted: dict[str, str]) -> None:
    """Make the mounted pool match ``wanted`` (already validated by ``merge_config``)."""
    opts = wanted.get("btrfs.mount_options", "")
    if drv.name == "btrfs" and opts != current.get("btrfs.mount_options", ""):
        _remount(str(drv.path), *remount_options(current.get("btrfs.mount_options", ""),
                                                  opts))
    if wanted.get("size") != current.get("size"):
        loop = _loop_file(current)
        assert loop is not None
        os.truncate(loop, parse_size(wanted["size"]))
        for dev in loop_devices_for(loop):
            run("losetup", "-c", dev, what="refresh loop device size")
        run("btrfs", "filesystem", "resize", "max", drv.path, what="grow btrfs filesystem")
    drv.config = dict(wanted)
