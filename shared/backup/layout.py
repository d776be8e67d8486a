"""Names and checks of LXD's backup layout (see the package docstring)."""

from __future__ import annotations

from typing import Any

import yaml

from shared.errors import BadRequest

PREFIX = "backup"
INDEX = f"{PREFIX}/index.yaml"
OPTIMIZED_HEADER = f"{PREFIX}/optimized_header.yaml"
BACKUP_YAML = "backup.yaml"  # inside a volume tree: what LXD's importer reads
# LXD's compression names -> tarball file extension (lxc export renames the file by it).
COMPRESSIONS = {"none": ".tar", "gzip": ".tar.gz", "bzip2": ".tar.bz2", "xz": ".tar.xz",
                "zstd": ".tar.zst"}
DEFAULT_COMPRESSION = "gzip"


def volume_dir(kind: str) -> str:
    """The tarball directory of the volume itself: ``container``, ``virtual-machine`` or
    ``volume`` (custom volumes)."""
    return {"container": "container", "virtual-machine": "virtual-machine",
            "custom": "volume"}[kind]


def snapshots_dir(kind: str) -> str:
    """LXD's snapshot directory of each volume kind (generic_vfs.go)."""
    return {"container": "snapshots", "virtual-machine": "virtual-machine-snapshots",
            "custom": "volume-snapshots"}[kind]


def check_compression(value: str | None) -> str:
    algo = (value or DEFAULT_COMPRESSION).strip()
    if algo not in COMPRESSIONS:
        raise BadRequest(f"Invalid compression algorithm {algo!r}: use one of "
                         f"{', '.join(COMPRESSIONS)}")
    return algo


def dump(data: Any) -> bytes:
    """YAML as LXD writes it (block style, keys in the given order)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).encode()


def parse_index(raw: bytes) -> dict[str, Any]:
    """``backup/index.yaml``, checked for what an import relies on (400 otherwise)."""
    try:
        info = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BadRequest(f"Invalid backup: index.yaml is not YAML ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise BadRequest("Invalid backup: index.yaml has no instance name")
    info.setdefault("type", "container")
    if info["type"] not in ("container", "virtual-machine", "custom"):
        raise BadRequest(f"Invalid backup: unknown type {info['type']!r} in index.yaml")
    snaps = info.get("snapshots") or []
    if not isinstance(snaps, list) or not all(isinstance(s, str) and s and "/" not in s
                                              for s in snaps):
        raise BadRequest("Invalid backup: index.yaml has an invalid snapshot list")
    info["snapshots"] = snaps
    info["optimized"] = bool(info.get("optimized"))
    info["optimized_header"] = bool(info.get("optimized_header"))
    cfg = info.get("config")
    info["config"] = cfg if isinstance(cfg, dict) else {}
    return info


def member_target(name: str, kind: str, snapshots: list[str]) -> tuple[str, str] | None:
    """Where a tar member belongs: ``("volume", rel)`` or ``("snapshot:<s>", rel)`` for
    tree members, ``("bin", "<s>"|"")`` for a send stream, ``("img", "<s>"|"")`` for a
    VM's raw disk, None for index/header files.
    Anything else (``..``, absolute paths, unknown tops) is a 400: an import writes only
    inside the volume it makes."""
    parts = name.strip("/").split("/")
    if parts == [PREFIX]:
        return None
    if not parts or parts[0] != PREFIX or any(p in ("", ".", "..") for p in parts):
        raise BadRequest(f"Invalid backup: unexpected member {name[:200]!r}")
    rest = parts[1:]
    vdir, sdir = volume_dir(kind), snapshots_dir(kind)
    if rest in (["index.yaml"], ["optimized_header.yaml"]):
        return None
    if rest[0] == vdir:
        return "volume", "/".join(rest[1:])
    if rest == [f"{vdir}.bin"]:
        return "bin", ""
    if kind == "virtual-machine" and rest == [f"{vdir}.img"]:
        return "img", ""
    if rest[0] == sdir:
        if len(rest) == 1:
            return None
        if len(rest) == 2 and rest[1].endswith(".bin") and rest[1][:-4] in snapshots:
            return "bin", rest[1][:-4]
        if kind == "virtual-machine" and len(rest) == 2 and rest[1].endswith(".img") \
                and rest[1][:-4] in snapshots:
            return "img", rest[1][:-4]
        if rest[1] in snapshots:
            return f"snapshot:{rest[1]}", "/".join(rest[2:])
        raise BadRequest(f"Invalid backup: {name[:200]!r} is not a snapshot in index.yaml")
    raise BadRequest(f"Invalid backup: unexpected member {name[:200]!r}")
