"""The ``size`` of snapshot objects: bytes only the snapshot holds, from its pool.

Why from the storage service, as the root disk's usage (disk_usage.py): on btrfs a
snapshot is a read-only subvolume and its qgroup's exclusive bytes are what LXD 5.0
reports (``RenderSnapshotUsage``: the pool's usage of the snapshot volume). Where the
pool cannot tell cheaply (dir, or btrfs with quotas off) LXD's figure is -1 (its
GetInstanceUsage answers -1 with "not supported"), and so is ours. One bus request
carries every snapshot of a listing; a slow or absent storage service gives -1 rather
than failing or delaying the listing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.bus import Bus
from shared.errors import CorralError
from shared.log import get_logger
from shared.messages.storage import VolumeRef, VolumeUsageReply, VolumeUsageRequest

from .drivers.router import type_of

UNKNOWN = -1  # LXD's size when the backend cannot tell
USAGE_TIMEOUT = 3.0  # seconds; past it snapshots are listed with UNKNOWN
log = get_logger(component="instance")


async def sizes(bus: Bus, node: str, inst: Mapping[str, Any],
                snaps: Sequence[Mapping[str, Any]]) -> list[int]:
    """``size`` of each of ``snaps`` (records of instance ``inst``), in one request."""
    return await sizes_many(bus, node, [(inst, s) for s in snaps])


async def sizes_many(bus: Bus, node: str,
                     pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
                     ) -> list[int]:
    """``size`` of each (instance record, snapshot record), in one request (a listing of
    many instances with their snapshots)."""
    if not pairs:
        return []
    req = VolumeUsageRequest(volumes=[
        VolumeRef(project=inst.get("project", "default"), pool=s.get("pool") or inst["pool"],
                  kind=type_of(inst), name=inst["name"], snapshot=s["name"])
        for inst, s in pairs])
    try:
        reply = await bus.request("storage", "volume_usage", req, node=node,
                                  timeout=USAGE_TIMEOUT)
    except (CorralError, TimeoutError) as exc:
        log.debug("snapshot sizes not included", error=str(exc))
        return [UNKNOWN] * len(pairs)
    usage = VolumeUsageReply.model_validate(reply.metadata).usage
    if len(usage) != len(pairs):
        return [UNKNOWN] * len(pairs)
    return [UNKNOWN if u is None else u for u in usage]
