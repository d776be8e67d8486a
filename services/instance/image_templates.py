"""Render the image's templates into an instance's root volume (LXD's templateApplyNow).

The root volume holds ``rootfs/``, ``metadata.yaml`` and ``templates/`` (LXD's layout), so
templates can be re-rendered on every start without asking the image service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.image.format import parse_metadata
from shared.image.templates import apply_templates


def apply(volume: Path, trigger: str, record: dict[str, Any], root_uid: int = 0,
          root_gid: int = 0) -> list[str]:
    """Render the templates for ``trigger``; nothing to do without metadata.yaml."""
    meta_file = volume / "metadata.yaml"
    if not meta_file.is_file():
        return []
    meta = parse_metadata(meta_file.read_bytes())
    if not meta["templates"]:
        return []
    cfg = record.get("expanded_config") or {}
    inst = {"name": record["name"], "type": record.get("type", "container"),
            "architecture": record.get("architecture", ""),
            "ephemeral": record.get("ephemeral", False),
            "privileged": cfg.get("security.privileged", "false") == "true"}
    return apply_templates(volume / "rootfs", volume / "templates", meta["templates"],
                           trigger, inst, config=cfg,
                           devices=record.get("expanded_devices") or {},
                           root_uid=root_uid, root_gid=root_gid)
