"""Disk device rules that need no host access (LXD's disk validateConfig, the part that
reads only the device): answered at once by validate for instances and profiles alike.
The host and storage checks are in :mod:`.disks`."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from shared.errors import BadRequest

from . import limits

Device = Mapping[str, str]
BOOL_KEYS = ("readonly", "shift", "optional", "required", "recursive")
LIMIT_KEYS = ("limits.read", "limits.write", "limits.max")
DISK_KEYS = frozenset({"type", "path", "source", "pool", *BOOL_KEYS, *LIMIT_KEYS})
_IOPS = re.compile(r"^(\d+)\s*iops$")
_VOLUME_NAME = re.compile(r"^[^/\\\x00]+$")


def is_extra_disk(dev: Device) -> bool:
    return dev.get("type") == "disk" and dev.get("path") != "/"


def flag(name: str, dev: Device, key: str) -> bool:
    v = dev.get(key, "")
    return bool(v) and limits.parse_bool(f"{key} of device {name!r}", v)


def parse_limit(name: str, key: str, value: str) -> tuple[int, int]:
    """(bytes/s, ops/s) of a ``limits.read``/``write``/``max`` value: ``10MB`` or
    ``100iops`` (LXD's forms)."""
    m = _IOPS.match(value.strip())
    if m:
        return 0, int(m.group(1))
    try:
        return limits.parse_bytes(key, value), 0
    except BadRequest:
        raise BadRequest(f"Device {name!r}: invalid {key} {value!r}: expected a rate in "
                         "bytes (e.g. 10MB) or operations (e.g. 100iops) per second") from None


def check_device(name: str, dev: Device) -> None:
    """LXD's rules for a non-root disk device that need no host access (400)."""
    unknown = sorted(set(dev) - DISK_KEYS)
    if "size" in unknown or "size.state" in unknown:
        raise BadRequest(f"Device {name!r}: only the root disk may have a size quota")
    if unknown:
        raise BadRequest(f"Device {name!r}: {', '.join(unknown)} "
                         f"{'is' if len(unknown) == 1 else 'are'} not supported for disk "
                         f"devices (supported: {', '.join(sorted(DISK_KEYS - {'type'}))})")
    for key in BOOL_KEYS:
        flag(name, dev, key)
    if dev.get("required") and dev.get("optional"):
        raise BadRequest(f'Device {name!r}: cannot use both "required" and deprecated '
                         '"optional" properties at the same time')
    source, path, pool = dev.get("source", ""), dev.get("path", ""), dev.get("pool", "")
    if not source:
        raise BadRequest(f'Device {name!r}: non root disk devices require the "source" '
                         "property")
    if path:
        if not path.startswith("/"):
            raise BadRequest(f"Device {name!r}: path {path!r} must be absolute (the mount "
                             "point inside the instance, e.g. /mnt/data)")
        if ".." in path.split("/") or "\0" in path:
            raise BadRequest(f"Device {name!r}: path {path!r} may not contain '..'")
        if not path.strip("/"):
            raise BadRequest(f"Device {name!r}: only the root disk is mounted on '/' (it "
                             "has a pool and no source)")
    if pool:
        if dev.get("shift"):
            raise BadRequest(f'Device {name!r}: the "shift" property cannot be used with '
                             "custom storage volumes (their files are always mapped to the "
                             "container's ids)")
        if source.startswith("/"):
            raise BadRequest(f"Device {name!r}: storage volumes cannot be specified as "
                             "absolute paths (source is a volume name when pool is set)")
        vol = source.removeprefix("custom/")
        if not _VOLUME_NAME.match(vol) or vol in (".", ".."):
            raise BadRequest(f"Device {name!r}: source {source!r} is not a custom volume "
                             "name (only custom volumes can be attached)")
    elif not source.startswith("/"):
        raise BadRequest(f"Device {name!r}: source path must be absolute for local "
                         f"sources ({source!r})")
    elif "\0" in source or ".." in source.split("/"):
        raise BadRequest(f"Device {name!r}: source path {source!r} may not contain '..' "
                         "(name the directory itself)")
    if flag(name, dev, "recursive") and flag(name, dev, "readonly"):
        raise BadRequest(f"Device {name!r}: recursive read-only bind-mounts aren't "
                         "supported (set readonly or recursive, not both)")
    for key in LIMIT_KEYS:
        if dev.get(key):
            parse_limit(name, key, dev[key])


def check_paths(devices: Mapping[str, Device]) -> None:
    """Two disks may not mount at the same path (LXD's message)."""
    seen: dict[str, str] = {}
    for name, dev in sorted(devices.items()):
        if dev.get("type") != "disk" or not dev.get("path"):
            continue
        p = posixpath.normpath(dev["path"])
        if p in seen:
            raise BadRequest(f"More than one disk device uses the same path {dev['path']!r} "
                             f"({seen[p]!r} and {name!r})")
        seen[p] = name


def rates(name: str, dev: Device) -> dict[str, int]:
    out = {"read_bps": 0, "write_bps": 0, "read_iops": 0, "write_iops": 0}
    for key, dirs in (("limits.max", ("read", "write")), ("limits.read", ("read",)),
                      ("limits.write", ("write",))):
        if dev.get(key):
            bps, iops = parse_limit(name, key, dev[key])
            for d in dirs:
                if bps:
                    out[f"{d}_bps"] = bps
                if iops:
                    out[f"{d}_iops"] = iops
    return out
