"""Instance volumes no instance owns any more: found after a start, removed with care.

Why: a create journals its volume (the instance record "Creating" first, the volume record
"creating" until whole), so a crash leaves nothing this sweep must find; but volumes made
by an older version, or by hand, may have no instance. Removing user data on a guess is
worse than leaving it, so the sweep is careful:

- it waits ``CORRAL_ORPHAN_CHECK_DELAY`` seconds after the start (the instance service
  reconciles first), then asks the instance service for every instance it has, in every
  project, those being created or deleted included (``corral.instance.list``);
- only instance volumes whose record is older than ``CORRAL_ORPHAN_GRACE`` seconds
  (default 10 minutes) and not being made count;
- if the instance service knows no instance at all while volumes exist, it does nothing
  (a wiped KV looks exactly like that) and says so;
- an unanswered question is retried, never taken as "no instances".
What stays can be removed with ``lxc storage volume delete <pool> container/<name>``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from shared.errors import CorralError, Unavailable
from shared.log import get_logger
from shared.messages.storage import VolumeRequest
from shared.operations import parse_lxd_time

from .usage import instance_urls
from .volumes import INSTANCE_KINDS, Volumes

log = get_logger(component="storage")


def _seconds(var: str, default: float) -> float:
    try:
        return float(os.environ.get(var, default))
    except ValueError:
        return default


def candidates(volumes: list[dict[str, Any]], known: set[str], used_by,
               grace: float, now: float) -> list[dict[str, Any]]:
    """Instance volumes older than ``grace`` whose instance ``known`` does not list."""
    out = []
    for vol in volumes:
        if vol.get("kind") not in INSTANCE_KINDS or vol.get("creating"):
            continue
        try:
            age = now - parse_lxd_time(vol.get("created_at") or "")
        except ValueError:
            continue
        if age >= grace and not set(used_by(vol)) & known:
            out.append(vol)
    return out


async def sweep(volumes: Volumes, ask=instance_urls) -> list[str]:
    """One careful pass; returns the volumes it removed (``pool/kind/name``)."""
    grace = _seconds("CORRAL_ORPHAN_GRACE", 600.0)
    known = await ask(volumes.bus)
    recs = [v for v in volumes.store.cached() if v.get("kind") in INSTANCE_KINDS]
    if not known and recs:
        log.warning("instance volumes exist but the instance service knows no instance: "
                    "not removing any (delete orphans with lxc storage volume delete)",
                    volumes=len(recs))
        return []
    removed = []
    for vol in candidates(recs, known, volumes.used_by, grace, time.time()):
        project = vol.get("project", "default")
        try:
            await volumes.delete(VolumeRequest(project=project, pool=vol["pool"],
                                               kind=vol["kind"], name=vol["name"]))
        except CorralError as exc:
            log.warning("orphan volume not removed", pool=vol["pool"], volume=vol["name"],
                        error=exc.message)
            continue
        log.warning("removed a volume no instance owns", pool=vol["pool"],
                    kind=vol["kind"], volume=vol["name"], project=project)
        removed.append(f"{vol['pool']}/{vol['kind']}/{vol['name']}")
    return removed


async def sweep_later(volumes: Volumes) -> None:
    """The background task the storage service starts: wait, then sweep once."""
    await asyncio.sleep(_seconds("CORRAL_ORPHAN_CHECK_DELAY", 60.0))
    for _ in range(20):
        try:
            await sweep(volumes)
            return
        except Unavailable:
            await asyncio.sleep(30.0)
        except Exception as exc:  # never let the sweep take the service down
            log.warning("orphan volume sweep failed", error=str(exc))
            return
