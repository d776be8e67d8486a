"""Who uses a pool: its volumes (our KV and the disk) and profiles (the instance service).

Listing tolerates an unreachable instance service (``used_by`` then lacks profiles); a
delete does not: it must never remove a pool a profile's root disk still points at, so an
unanswered question is a 503, not a guess.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.api import url
from shared.bus import Bus
from shared.errors import Conflict, CorralError, Unavailable
from shared.log import get_logger
from shared.models import ListRequest

from .pools import Pools
from .volumes import Volumes, disk_name

log = get_logger(component="storage")


async def instance_urls(bus: Bus) -> set[str]:
    """URLs of every instance record, in every project, even those being created or
    deleted (Raises Unavailable when the instance service does not answer)."""
    reply = await bus.request("instance", "list", ListRequest(recursion=0, all_projects=True))
    return set(reply.metadata or [])


async def profiles_using(bus: Bus, pool: str | None = None) -> dict[str, list[str]]:
    """pool -> URLs of profiles with a disk device on it (all pools when ``pool`` is None).
    Raises Unavailable when the instance service does not answer."""
    reply = await bus.request("instance", "profile_list",
                              ListRequest(recursion=1, all_projects=True))
    out: dict[str, list[str]] = {}
    for p in reply.metadata or []:
        for dev in (p.get("devices") or {}).values():
            if dev.get("type") == "disk" and dev.get("pool") and (
                    pool is None or dev["pool"] == pool):
                out.setdefault(dev["pool"], []).append(
                    url("profiles", p["name"], p.get("project", "default")))
                break
    return out


async def used_by_all(bus: Bus, volumes: Volumes, pools: list[str]) -> dict[str, list[str]]:
    """``used_by`` for several pools with one question to the instance service."""
    try:
        profiles = await profiles_using(bus)
    except CorralError as exc:
        log.debug("profiles not included in used_by", error=exc.message)
        profiles = {}
    out = {}
    for pool in pools:
        urls = {u for v in volumes.in_pool(pool) for u in volumes.used_by(v)}
        urls.update(profiles.get(pool, []))
        out[pool] = sorted(urls)
    return out


async def ensure_unused(bus: Bus, pools: Pools, volumes: Volumes, rec: dict[str, Any]
                        ) -> None:
    """409 naming what still uses the pool (image volumes do not count: they go with it)."""
    name = rec["name"]
    blockers = [f"{v['kind']}/{v['name']}" for v in volumes.in_pool(name)
                if v["kind"] != "image"]
    if name not in pools.unavailable and rec.get("status") == "Created":
        drv = await pools.available(rec)
        known = {(v["kind"], disk_name(v.get("project", "default"), v["name"]))
                 for v in volumes.in_pool(name)}
        on_disk = await asyncio.to_thread(drv.list_volumes)
        blockers += [f"{k}/{n}" for k, n in on_disk if k != "image" and (k, n) not in known]
    if blockers:
        raise Conflict(f"Storage pool {name!r} is in use by volumes: {', '.join(blockers)}; "
                       "delete them first")
    try:
        profiles = (await profiles_using(bus, name)).get(name, [])
    except Unavailable as exc:
        raise Unavailable(f"Cannot check whether profiles use storage pool {name!r} (the "
                          f"instance service does not answer: {exc.message}); not deleting "
                          "it") from exc
    if profiles:
        raise Conflict(f"Storage pool {name!r} is in use by profiles: {', '.join(profiles)}; "
                       "point their disk devices at another pool first")
