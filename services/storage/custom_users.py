"""The instances and profiles whose disk devices name a custom volume, and pointing them at
the volume's new name or pool (LXD's ``storagePoolVolumeUpdateUsers``).

Why: a rename or a move must not leave a device naming a volume that is gone. As LXD, a
volume a running (or frozen) instance uses is not renamed or moved at all (400); the
stopped instances' own devices and the profiles' devices are patched to the new name
through the instance service (which checks them as any change), and patched back if a
later step fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.api import url
from shared.bus import Bus
from shared.errors import BadRequest, CorralError, Unavailable
from shared.log import get_logger
from shared.models import ListRequest, ObjectRequest

log = get_logger(component="storage")
RUNNING = ("Running", "Frozen")


@dataclass
class Holder:
    """An instance or profile with its own devices naming the volume."""

    kind: str  # "instance" or "profile"
    name: str
    project: str
    devices: dict[str, dict[str, str]]
    names: list[str] = field(default_factory=list)  # its devices that name the volume


def _names(devices: dict[str, Any], pool: str, volume: str) -> list[str]:
    return sorted(n for n, d in (devices or {}).items()
                  if d.get("type") == "disk" and d.get("pool") == pool
                  and (d.get("source") or "").removeprefix("custom/") == volume)


async def holders(bus: Bus, pool: str, project: str, volume: str, known: set[str]
                  ) -> tuple[list[Holder], list[str]]:
    """(what to patch, URLs of running instances using the volume). ``known``: the
    projects that have their own volume of that name in the pool (their devices name
    theirs, not this one: see :meth:`CustomVolumes.users`)."""
    def ours(p: str) -> bool:
        return p == project or (project == "default" and p not in known)

    try:
        inst = await bus.request("instance", "list", ListRequest(recursion=1,
                                                                 all_projects=True))
        profiles = (await bus.request("instance", "profile_list",
                                      ListRequest(recursion=1, project=project))).metadata
    except CorralError as exc:
        raise Unavailable(f"Cannot check what uses the volume (the instance service does "
                          f"not answer: {exc.message}); try again") from exc
    out, running = [], []
    for i in inst.metadata or []:
        p = i.get("project", "default")
        if not ours(p):
            continue
        if i.get("status") in RUNNING and _names(i.get("expanded_devices") or {}, pool,
                                                  volume):
            running.append(url("instances", i["name"], p))
        own = _names(i.get("devices") or {}, pool, volume)
        if own:
            out.append(Holder("instance", i["name"], p, dict(i.get("devices") or {}), own))
    for prof in profiles or []:
        own = _names(prof.get("devices") or {}, pool, volume)
        if own:
            out.append(Holder("profile", prof["name"], prof.get("project") or project,
                              dict(prof.get("devices") or {}), own))
    return out, running


async def _patch(bus: Bus, h: Holder, devices: dict[str, dict[str, str]]) -> None:
    verb = "patch" if h.kind == "instance" else "profile_patch"
    await bus.request("instance", verb, ObjectRequest(project=h.project, name=h.name,
                                                      body={"devices": devices}),
                      timeout=60)


async def repoint(bus: Bus, found: list[Holder], new_pool: str, new_name: str
                  ) -> list[Holder]:
    """Point the devices at ``new_pool``/``new_name``; returns the holders changed (to
    :func:`restore` if a later step fails). On a failure the ones done are put back and
    a 400 says which one refused."""
    done: list[Holder] = []
    for h in found:
        devices = {n: dict(d) for n, d in h.devices.items()}
        for n in h.names:
            devices[n].update(pool=new_pool, source=new_name)
        try:
            await _patch(bus, h, devices)
        except CorralError as exc:
            await restore(bus, done)
            raise BadRequest(f"Cannot point {h.kind} {h.name!r} at the volume's new name: "
                             f"{exc.message}") from exc
        done.append(h)
    return done


async def restore(bus: Bus, changed: list[Holder]) -> None:
    """Best effort: the devices as they were (logged when it cannot be done)."""
    for h in changed:
        try:
            await _patch(bus, h, h.devices)
        except CorralError as exc:
            log.warning("could not point a device back at a volume", holder=h.name,
                        kind=h.kind, error=exc.message)
