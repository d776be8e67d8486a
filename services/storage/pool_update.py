"""Changing a pool's config in place: which keys may change, and how the host follows.

As LXD: ``source`` never changes (it names the data); btrfs ``btrfs.mount_options``
triggers a remount, and ``size`` grows a loop file (never shrinks: btrfs would have to
move data first, and a wrong guess loses it). Everything else is a 400 that names the
keys which can change.
"""

from __future__ import annotations

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
    return wanted


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
    opts = wanted.get("btrfs.mount_options")
    if opts and opts != current.get("btrfs.mount_options"):
        run("mount", "-o", f"remount,{opts}", drv.path, error=BadRequest,
            what=f"apply mount options {opts!r}")
    if wanted.get("size") != current.get("size"):
        loop = _loop_file(current)
        assert loop is not None
        os.truncate(loop, parse_size(wanted["size"]))
        for dev in loop_devices_for(loop):
            run("losetup", "-c", dev, what="refresh loop device size")
        run("btrfs", "filesystem", "resize", "max", drv.path, what="grow btrfs filesystem")
    drv.config = dict(wanted)
