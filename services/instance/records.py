"""The instance record kept in KV, and the LXD shapes made from it.

Why one place: the record is the single source for ``GET /1.0/instances/<n>``, lists,
profile ``used_by`` and the exec/files mixin; profile expansion lives here so create,
update and profile changes expand the same way (profiles in order, then the instance's
own config; a device replaces a same-named one whole).
"""

from __future__ import annotations

import platform
from typing import Any

from shared.api import etag, url
from shared.models import lxd_time

STATUS_CODES = {"Running": 103, "Stopped": 102, "Frozen": 110, "Creating": 106,
                "Starting": 106, "Stopping": 107, "Error": 112}


def expand(profiles: list[dict[str, Any]], config: dict[str, str],
           devices: dict[str, dict[str, str]]) -> tuple[dict[str, str], dict[str, dict]]:
    cfg: dict[str, str] = {}
    devs: dict[str, dict[str, str]] = {}
    for p in profiles:
        cfg.update(p.get("config") or {})
        devs.update({k: dict(v) for k, v in (p.get("devices") or {}).items()})
    cfg.update(config)
    devs.update({k: dict(v) for k, v in devices.items()})
    return cfg, devs


def new_record(name: str, project: str, body: dict[str, Any], config: dict[str, str],
               devices: dict[str, dict[str, str]], profiles: list[str]) -> dict[str, Any]:
    now = lxd_time()
    return {
        "name": name, "project": project, "type": "container",
        "architecture": platform.machine(), "config": config, "devices": devices,
        "profiles": profiles, "ephemeral": bool(body.get("ephemeral", False)),
        "stateful": False, "description": body.get("description") or "",
        "created_at": now, "last_used_at": "1970-01-01T00:00:00Z", "status": "Creating",
        "expanded_config": {}, "expanded_devices": {}, "pool": "", "volume": "",
    }


def record_etag(r: dict[str, Any]) -> str:
    """Over the fields PUT can change (LXD hashes its writable struct the same way)."""
    return etag(r.get("architecture"), r.get("config"), r.get("devices"),
                r.get("ephemeral"), r.get("profiles"), r.get("description"))


def public(r: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """LXD's instance object (``get_instance_rest1.json``)."""
    status = status or r.get("status", "Stopped")
    return {
        "architecture": r["architecture"], "config": r["config"], "devices": r["devices"],
        "ephemeral": r["ephemeral"], "profiles": r["profiles"], "stateful": r["stateful"],
        "description": r["description"], "created_at": r["created_at"],
        "expanded_config": r["expanded_config"], "expanded_devices": r["expanded_devices"],
        "name": r["name"], "status": status, "status_code": STATUS_CODES.get(status, 112),
        "last_used_at": r["last_used_at"], "location": r.get("location") or "none",
        "type": r["type"], "project": r["project"],
    }


def instance_url(r: dict[str, Any]) -> str:
    return url("instances", r["name"], r["project"])


def nic_names(devices: dict[str, dict[str, str]]) -> list[str]:
    """NIC device names in LXC index order (sorted, as LXD orders devices)."""
    return sorted(n for n, d in devices.items() if d.get("type") == "nic")
