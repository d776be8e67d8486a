"""The read-only copies a btrfs send reads from, journaled so a killed source drops them.

Why: a writable subvolume cannot be sent, so the source asks the storage service to
freeze the volume (and its snapshots) as read-only snapshots under the pool's
``.corral-backups`` and drops them at the end. A source process killed in between would
leave them for good (nothing else names them). So before freezing, the request is written
to ``$CORRAL_DIR/migration-frozen/<operation>.json``; it goes once the copies are dropped,
and the service's next start drops whatever the files still name (retrying while the
storage service is not up yet).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shared.bus import Bus
from shared.errors import NotFound
from shared.log import get_logger
from shared.messages.backup import VolumeBackupRequest

log = get_logger()
TIMEOUT = 30.0
SWEEP_FOR = 120.0  # at start: how long to retry a storage service that does not answer


def root(config: Any) -> Path:
    return Path(config.dir) / "migration-frozen"


def record(config: Any, op_id: str, req: VolumeBackupRequest) -> Path:
    """Write the journal entry (before the freeze: a kill right after it is covered)."""
    path = root(config) / f"{op_id}.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(req.model_dump_json())
    tmp.replace(path)
    return path


async def drop(bus: Bus, req: VolumeBackupRequest) -> None:
    """The copies gone (already gone is fine)."""
    try:
        await bus.request("storage", "volume_backup_delete", req, node=bus.config.node,
                          timeout=TIMEOUT)
    except NotFound:
        pass


async def release(bus: Bus, entry: Path, req: VolumeBackupRequest) -> None:
    """At the end of a send: drop the copies, then the journal entry (kept on failure:
    the next start tries again)."""
    try:
        await drop(bus, req)
    except Exception as exc:  # noqa: BLE001 - the sweep at the next start retries
        log.warning("dropping a migration's read-only copies failed", volume=req.name,
                    error=getattr(exc, "message", None) or str(exc))
        return
    entry.unlink(missing_ok=True)


async def sweep(bus: Bus, config: Any) -> int:
    """At start: drop the copies every journal entry names; the count dropped."""
    top = root(config)
    entries = sorted(top.glob("*.json")) if top.is_dir() else []
    for tmp in top.glob("*.tmp") if top.is_dir() else []:
        tmp.unlink(missing_ok=True)  # written, never renamed: nothing was frozen yet
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SWEEP_FOR
    done = 0
    for entry in entries:
        try:
            req = VolumeBackupRequest.model_validate(json.loads(entry.read_text()))
        except (ValueError, OSError):
            entry.unlink(missing_ok=True)
            continue
        while True:
            try:
                await drop(bus, req)
                break
            except Exception as exc:  # noqa: BLE001 - storage not up yet: retried
                if loop.time() > deadline:
                    log.warning("stale migration copies not dropped", volume=req.name,
                                error=getattr(exc, "message", None) or str(exc))
                    return done
                await asyncio.sleep(1.0)
        entry.unlink(missing_ok=True)
        done += 1
    if done:
        log.info("stale migration read-only copies dropped", count=done)
    return done
