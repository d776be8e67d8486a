"""Which NICs of a bridge have ACLs of their own (a NIC's ``security.acls``).

The instance service owns devices; the network service learns a NIC's ACLs when the NIC
is resolved at start (``nic_config``) and keeps them as one small JSON file per MAC in
the network's state dir, so the network's ACL table can be rebuilt at any time (an ACL's
rules changed, the service restarted) without asking anyone. A deleted instance's files
go with its leases (``nic_release``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DIR = "nic-acls"


def _path(state_dir: Path, hwaddr: str) -> Path:
    return state_dir / DIR / hwaddr.lower().replace(":", "-")


def read_all(state_dir: Path) -> list[dict[str, Any]]:
    """``[{hwaddr, acls, addresses, instance, project, ingress_action, egress_action}]``."""
    try:
        files = sorted((state_dir / DIR).iterdir())
    except OSError:
        return []
    out = []
    for path in files:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def write(state_dir: Path, entry: dict[str, Any] | None, hwaddr: str) -> bool:
    """Record (or with None forget) one NIC's ACLs; whether anything changed."""
    path = _path(state_dir, hwaddr)
    if entry is None:
        if not path.exists():
            return False
        path.unlink()
        return True
    text = json.dumps(entry, sort_keys=True)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def remove(state_dir: Path, hwaddrs: set[str]) -> int:
    return sum(write(state_dir, None, mac) for mac in hwaddrs)
