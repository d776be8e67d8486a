"""Root disk usage in instance state (``state.disk.<root device>.usage``), as LXD shows it
in ``lxc list -c D`` and ``lxc info``.

Why from the storage service: the volume's bytes are a backend fact (btrfs qgroups); the
instance service only knows which pool and volume an instance's root is. One bus request
carries every instance of a listing, and the storage service caches figures briefly, so
``GET /1.0/instances?recursion=2`` stays one round trip however many instances there are.
Usage is best effort: a slow or absent storage service leaves the key out (as LXD does for
a backend that cannot tell, like ``dir``), it never fails or delays a listing much.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.bus import Bus
from shared.errors import CorralError
from shared.log import get_logger
from shared.messages.storage import VolumeRef, VolumeUsageReply, VolumeUsageRequest

from .drivers.router import type_of
from .names import host_of

USAGE_TIMEOUT = 3.0  # seconds; past it a listing goes without disk usage
log = get_logger(component="instance")


def root_name(rec: Mapping[str, Any]) -> str | None:
    """The name of the record's root disk device (usually ``root``), None if it has none."""
    for name, dev in (rec.get("expanded_devices") or {}).items():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            return name
    return None


def merge(states: Mapping[str, dict[str, Any] | None], recs: list[Mapping[str, Any]],
          usage: list[int | None]) -> None:
    """Put ``usage[i]`` (for ``recs[i]``) into the state of that instance, keyed by the
    root device's name. Pure, so the shape is unit-tested."""
    for rec, used in zip(recs, usage, strict=True):
        state = states.get(host_of(rec))
        dev = root_name(rec)
        if used is None or state is None or dev is None:
            continue
        disk = state.get("disk") or {}
        disk[dev] = {**disk.get(dev, {}), "usage": used}
        state["disk"] = disk


async def fill(bus: Bus, node: str, recs: Iterable[Mapping[str, Any]],
               states: Mapping[str, dict[str, Any] | None]) -> None:
    """Ask the storage service of ``node`` once for the root volumes of ``recs`` and add
    the figures to ``states`` (host name -> state, updated in place)."""
    wanted = [r for r in recs if states.get(host_of(r)) is not None]
    fetched = await fetch(bus, node, wanted)
    if fetched is not None:
        merge(states, *fetched)


async def fetch(bus: Bus, node: str, recs: Iterable[Mapping[str, Any]]
                ) -> tuple[list[Mapping[str, Any]], list[int | None]] | None:
    """The root volume usage of ``recs`` (those with a pool): ``(recs, usage)`` to
    ``merge`` once the states are known, or None. Separate from ``fill`` so a list asks
    the storage service while it reads the states, not after."""
    wanted = [r for r in recs if r.get("pool")]
    if not wanted:
        return None
    req = VolumeUsageRequest(volumes=[
        VolumeRef(project=r.get("project", "default"), pool=r["pool"], kind=type_of(r),
                  name=r["name"]) for r in wanted])
    try:
        reply = await bus.request("storage", "volume_usage", req, node=node,
                                  timeout=USAGE_TIMEOUT)
    except (CorralError, TimeoutError) as exc:
        log.debug("disk usage not included", error=str(exc))
        return None
    usage = VolumeUsageReply.model_validate(reply.metadata).usage
    return (wanted, usage) if len(usage) == len(wanted) else None
