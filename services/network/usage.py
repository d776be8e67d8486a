"""Who uses a network: instances (asked of the instance service) and profiles.

A network must never be deleted or renamed while something uses it, so for those checks
("strict") an unanswered question is an error (503), never a silent "unused". For reads
(``used_by`` in GET and lists) a missing answer only leaves the list shorter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.api import url
from shared.bus import Bus
from shared.errors import CorralError, Unavailable
from shared.log import get_logger
from shared.messages.network import NetworkUsersRequest
from shared.models import ListRequest

log = get_logger(component="network")


def device_uses(dev: dict[str, Any], name: str) -> bool:
    """A NIC on the network: ``network: name``, or a bridged/macvlan ``parent: name``."""
    if dev.get("type") != "nic":
        return False
    if dev.get("network") == name:
        return True
    return dev.get("nictype") in ("bridged", "macvlan") and dev.get("parent") == name


def _timeout(bus: Bus, strict: bool) -> float | None:
    """Reads wait half the caller's budget, so a slow instance service cannot make the
    gateway's own request to us time out; strict checks wait the full time."""
    return None if strict else bus.config.request_timeout / 2


def _unavailable(name: str, exc: CorralError) -> Unavailable:
    return Unavailable(f"cannot check whether network {name} is in use: {exc.message}")


async def profiles_using(bus: Bus, project: str, names: list[str], strict: bool = False
                         ) -> dict[str, list[str]]:
    """Profile URLs per network name, from one ``profile_list`` request."""
    out: dict[str, list[str]] = {n: [] for n in names}
    req = ListRequest(project=project, recursion=1, all_projects=True)
    try:
        reply = await bus.request("instance", "profile_list", req,
                                  timeout=_timeout(bus, strict))
    except CorralError as exc:
        if strict:
            raise _unavailable(names[0] if len(names) == 1 else "(any)", exc) from exc
        log.warning("profiles unknown for used_by", error=exc.message)
        return out
    for profile in reply.metadata or []:
        devices = (profile.get("devices") or {}).values()
        pproject = profile.get("project", project)
        for name in names:
            if any(device_uses(dev, name) for dev in devices):
                out[name].append(url("profiles", profile["name"], pproject))
    return out


async def instances_using(bus: Bus, project: str, name: str, strict: bool = False
                          ) -> list[str]:
    """Instance URLs from the instance service's ``network_users``."""
    req = NetworkUsersRequest(project=project, name=name)
    try:
        reply = await bus.request("instance", "network_users", req,
                                  timeout=_timeout(bus, strict))
    except CorralError as exc:
        if strict:
            raise _unavailable(name, exc) from exc
        log.debug("instances unknown for used_by", network=name, error=exc.message)
        return []
    return list(reply.metadata or [])


async def used_by(bus: Bus, project: str, names: list[str], managed: set[str],
                  strict: bool = False) -> dict[str, list[str]]:
    """``used_by`` for each name: instances (managed networks only) then profiles."""
    if not names:
        return {}
    managed_names = [n for n in names if n in managed]
    profiles, *instances = await asyncio.gather(
        profiles_using(bus, project, names, strict),
        *(instances_using(bus, project, n, strict) for n in managed_names))
    out = {n: list(profiles.get(n, [])) for n in names}
    for name, users in zip(managed_names, instances, strict=True):
        out[name] = sorted(set(users)) + out[name]
    return out
