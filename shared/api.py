"""Small helpers for LXD's API shapes that every service uses."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable
from urllib.parse import quote

from .errors import BadRequest, PreconditionFailed


def url(collection: str, name: str, project: str = "default") -> str:
    """``/1.0/instances/c1`` (with ``?project=`` outside the default project, as LXD)."""
    out = f"/1.0/{collection}/{quote(name, safe='')}"
    return out if project == "default" else f"{out}?project={quote(project, safe='')}"


def listing(collection: str, items: Iterable[tuple[str, dict[str, Any]]], recursion: int,
            project: str = "default") -> list[Any]:
    """LXD's list answer: URLs at recursion 0, the objects themselves above."""
    if recursion <= 0:
        return [url(collection, name, project) for name, _obj in items]
    return [obj for _name, obj in items]


def etag(*parts: Any) -> str:
    """A stable ETag over the user-editable fields of an object (as LXD hashes them)."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def check_etag(expected: str | None, current: str) -> None:
    if expected and expected.strip('"') != current:
        raise PreconditionFailed("ETag doesn't match: the object changed since you read it")


_NAME_BAD = re.compile(r"[/\\\s]|^\.{1,2}$")


def validate_object_name(kind: str, name: Any) -> str:
    """LXD's rules for profile/pool/volume-like names: non-empty, no slash or space."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"No {kind} name provided")
    if _NAME_BAD.search(name) or len(name) > 64:
        raise BadRequest(f"Invalid {kind} name {name!r}: names may not contain slashes or "
                         "spaces, may not be '.' or '..', and are at most 64 characters")
    return name


def description(value: Any) -> str:
    """An object's ``description``: a string, absent meaning empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest("Invalid description: expected a string")
    return value


def string_map(kind: str, value: Any) -> dict[str, str]:
    """A config map must be string keys to string values (LXD is strict about it)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"Invalid {kind}: expected an object of string keys and values")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        if not isinstance(k, str) or not isinstance(v, str):
            raise BadRequest(f"Invalid {kind} entry {k!r}: values must be strings")
        out[k] = v
    return out


def devices_map(value: Any) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("Invalid devices: expected an object of device name to device")
    out = {}
    for name, dev in value.items():
        validate_object_name("device", name)
        # An empty value is no value: `lxc config device unset` sends the key with "" (as
        # LXD, the key is then gone, not kept empty).
        dev = {k: v for k, v in string_map(f"device {name!r}", dev).items() if v != ""}
        if "type" not in dev:
            raise BadRequest(f"Device {name!r} has no type (nic, disk, ...)")
        out[name] = dev
    return out


def byte_size(n: int) -> str:
    """LXD's units.GetByteSizeString(n, 2): decimal units, two decimals."""
    if n < 1000:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB", "EB"):
        value /= 1000
        if value < 1000:
            return f"{value:.2f}{unit}"
    return f"{value:.2f}EB"
