"""Render the image's templates into an instance's root volume (LXD's templateApplyNow).

The root volume holds ``rootfs/``, ``metadata.yaml`` and ``templates/`` (LXD's layout), so
templates can be re-rendered on every start without asking the image service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.image.format import parse_metadata
from shared.image.templates import apply_templates


def _templates(meta_file: Path) -> dict[str, Any]:
    """The image's templates from ``metadata.yaml``, parsed once per file version.

    Why a cache: every start re-renders the "start" templates (LXD does too), and parsing
    the YAML again each time was most of that step's cost; the file is keyed by its
    inode, size and mtime, so an edited metadata.yaml (``PUT .../metadata``) is read anew.
    """
    st = meta_file.stat()
    stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
    hit = _PARSED.get(str(meta_file))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    tpls = parse_metadata(meta_file.read_bytes())["templates"]
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[str(meta_file)] = (stamp, tpls)
    return tpls


_PARSED: dict[str, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}
_PARSED_MAX = 512


def has(volume: Path, trigger: str) -> bool:
    """Does the image in ``volume`` have a template for ``trigger``? (No render.)"""
    meta_file = volume / "metadata.yaml"
    if not meta_file.is_file():
        return False
    return any(trigger in t.when for t in _templates(meta_file).values())


def apply(volume: Path, trigger: str, record: dict[str, Any], root_uid: int = 0,
          root_gid: int = 0) -> list[str]:
    """Render the templates for ``trigger``; nothing to do without metadata.yaml."""
    meta_file = volume / "metadata.yaml"
    if not meta_file.is_file():
        return []
    templates = _templates(meta_file)
    if not templates:
        return []
    cfg = record.get("expanded_config") or {}
    inst = {"name": record["name"], "type": record.get("type", "container"),
            "architecture": record.get("architecture", ""),
            "ephemeral": record.get("ephemeral", False),
            "privileged": cfg.get("security.privileged", "false") == "true"}
    return apply_templates(volume / "rootfs", volume / "templates", templates,
                           trigger, inst, config=cfg,
                           devices=record.get("expanded_devices") or {},
                           root_uid=root_uid, root_gid=root_gid)
