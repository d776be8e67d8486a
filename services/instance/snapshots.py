"""Instance snapshot records: the KV bucket ``instance_snapshots``, owned by this service.

One record per snapshot, key ``key(project, instance, snapshot)``. The volume's snapshot
itself is the storage service's (``volume_snapshot_*`` verbs); this record is what LXD keeps
in its database: the instance's config as it was, so a restore brings both back.

Record shape (every module that copies, exports or imports snapshots reads this)::

    {"project": "default", "instance": "c1", "name": "snap0",       # short name
     "type": "container" | "virtual-machine", "architecture": "x86_64",
     "config": {...}, "devices": {...}, "profiles": [...],          # as the instance had them
     "expanded_config": {...}, "expanded_devices": {...},
     "ephemeral": False, "stateful": False, "description": "",
     "created_at": "<lxd time>", "expires_at": "0001-01-01T00:00:00Z",
     "last_used_at": "1970-01-01T00:00:00Z", "pool": "default",
     "creating": True}                                               # only while being made

``creating`` is the journal of a snapshot being made (record first, then the volume
snapshot): a record still ``creating`` at start is removed with its volume snapshot.
"""

from __future__ import annotations

from typing import Any

from shared.state import Store, key

NO_EXPIRY = "0001-01-01T00:00:00Z"


def snapshot_key(project: str, instance: str, snapshot: str) -> str:
    return key(project, instance, snapshot)


def records(store: Store, project: str, instance: str) -> list[dict[str, Any]]:
    """The instance's snapshot records (cached read), oldest first (LXD's order)."""
    return sorted((r for r in store.cached()
                   if r["project"] == project and r["instance"] == instance),
                  key=lambda r: (r["created_at"], r["name"]))


def find(store: Store, project: str, instance: str, snapshot: str) -> dict[str, Any] | None:
    for r in records(store, project, instance):
        if r["name"] == snapshot:
            return r
    return None
