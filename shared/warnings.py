"""LXD's warnings: what a user should know about this host, kept in the ``warnings`` KV bucket.

Why a shared bucket (like ``operations``): any service notices something about its host (the
instance service that KVM does not work, the storage service that a pool cannot be mounted)
and any gateway replica answers ``/1.0/warnings``. A warning is one entry per
(type, project, entity, node): raising it again bumps ``count``, ``last_seen_at`` and
``last_message`` instead of adding a second one, as LXD's ``UpsertWarning`` does. Its key is
its UUID, derived from that tuple, so a raise needs no scan and two processes raising the
same warning at once meet on the same key (compare-and-set settles the count). Resolving
marks it ``resolved`` (LXD keeps resolved warnings until deleted); raising a resolved one
makes it ``new`` again; an ``acknowledged`` one stays acknowledged (the user knows).

Events: ``warning-created`` when a warning first appears, ``warning-acknowledged``,
``warning-reset`` (back to new) and ``warning-deleted`` from the gateway.
"""

from __future__ import annotations

import uuid
from typing import Any

from .bus import Bus
from .errors import BadRequest, Conflict, Forbidden
from .events import Events
from .models import lxd_time
from .state import Store, mutate

BUCKET = "warnings"
STATUSES = ("new", "acknowledged", "resolved")
_NAMESPACE = uuid.UUID("6b1c0f38-3d0e-4c8f-9a57-2f4f0a3c5e11")

# LXD's warning types (lxd/db/warningtype) that Corral raises: name -> severity.
INSTANCE_TYPE_NOT_OPERATIONAL = "Instance type not operational"
APPARMOR_NOT_AVAILABLE = "AppArmor support has been disabled"
STORAGE_POOL_UNAVAILABLE = "Storage pool unavailable"
NETWORK_UNAVAILABLE = "Network unavailable"
MISSING_CGROUP = {  # controller -> type
    "blkio": "Couldn't find the CGroup blkio",
    "blkio.weight": "Couldn't find the CGroup blkio.weight",
    "cpu": "Couldn't find the CGroup CPU controller",
    "cpuset": "Couldn't find the CGroup CPUset controller",
    "cpuacct": "Couldn't find the CGroup CPUacct controller",
    "devices": "Couldn't find the CGroup devices controller",
    "freezer": "Couldn't find the CGroup freezer controller",
    "hugetlb": "Couldn't find the CGroup hugetlb controller",
    "memory": "Couldn't find the CGroup memory controller",
    "pids": "Couldn't find the CGroup pids controller",
    "memory.memsw": "Couldn't find the CGroup memory swap accounting",
}
SEVERITY = {STORAGE_POOL_UNAVAILABLE: "high", NETWORK_UNAVAILABLE: "high"}


def warning_uuid(type_: str, project: str, entity_url: str, node: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\0".join((type_, project, entity_url, node))))


def raised(current: dict[str, Any] | None, type_: str, message: str, *, project: str,
           entity_url: str, node: str, now: str) -> dict[str, Any]:
    """The warning after one more sighting (``current`` is None the first time)."""
    if current is None:
        return {"uuid": warning_uuid(type_, project, entity_url, node), "location": node,
                "project": project, "type": type_, "count": 1, "first_seen_at": now,
                "last_seen_at": now, "last_message": message,
                "severity": SEVERITY.get(type_, "low"), "entity_url": entity_url,
                "status": "new"}
    status = "new" if current.get("status") == "resolved" else current.get("status", "new")
    return {**current, "count": int(current.get("count", 0)) + 1, "last_seen_at": now,
            "last_message": message, "status": status}


def check_status(body: Any) -> str:
    """The status a PUT/PATCH may set (LXD: only ``new`` or ``acknowledged``)."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid warning: expected a JSON object")
    status = body.get("status")
    if status not in STATUSES:
        raise BadRequest(f"Invalid warning status {status!r}: use 'new' or 'acknowledged'")
    if status == "resolved":
        raise Forbidden('Status may only be set to "acknowledged" or "new"')
    return status


class Warnings:
    """Raise and resolve this process's warnings (one per type and entity on this node)."""

    def __init__(self, bus: Bus, events: Events, node: str) -> None:
        self.store = Store(bus, BUCKET, history=1, description="Corral warnings (LXD's)")
        self.events = events
        self.node = node

    async def open(self) -> "Warnings":
        await self.store.open()
        return self

    async def raise_(self, type_: str, message: str, *, project: str = "",
                     entity_url: str = "") -> dict[str, Any]:
        """Record a sighting; ``warning-created`` the first time."""
        k = warning_uuid(type_, project, entity_url, self.node)
        now = lxd_time()
        if await self.store.get(k) is None:
            first = raised(None, type_, message, project=project, entity_url=entity_url,
                           node=self.node, now=now)
            try:
                await self.store.create(k, first)
            except Conflict:  # another process created it first: count this sighting
                pass
            else:
                await self.events.lifecycle("warning-created", f"/1.0/warnings/{k}",
                                            project=project or "default")
                return first
        return await mutate(self.store, k, lambda w: raised(
            w, type_, message, project=project, entity_url=entity_url, node=self.node,
            now=now), "Warning")

    async def resolve(self, type_: str, *, project: str = "", entity_url: str = "") -> None:
        """The condition is gone: mark the warning resolved (if there is one)."""
        k = warning_uuid(type_, project, entity_url, self.node)
        found = await self.store.get(k)
        if found is None or found[0].get("status") == "resolved":
            return
        await mutate(self.store, k, lambda w: {**w, "status": "resolved"}, "Warning")

    async def apply(self, checks: dict[str, str | None], **where: str) -> None:
        """Raise each type whose message is set, resolve each whose message is None."""
        for type_, message in checks.items():
            if message:
                await self.raise_(type_, message, **where)
            else:
                await self.resolve(type_, **where)

    async def storage_pools(self, unavailable: dict[str, str], names: list[str]) -> None:
        """One ``Storage pool unavailable`` warning per pool that could not be mounted
        (the reason as its message); resolved for the pools that are fine."""
        for name in names:
            reason = unavailable.get(name)
            await self.apply({STORAGE_POOL_UNAVAILABLE: (
                f"Storage pool {name!r} could not be mounted: {reason}" if reason else None)},
                entity_url=f"/1.0/storage-pools/{name}")
