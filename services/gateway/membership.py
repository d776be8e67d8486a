"""This node's heartbeat in the ``members`` bucket (cluster mode only).

Why the gateway writes it, not a service: the gateway is the one process every node runs
in both modes (separate and ``corral-all``), it is the node's API (the member ``url``), and
a node whose gateway is dead cannot be used through LXD's API, so OFFLINE is the truth
for it. The facts it reports are read locally and cheaply (``/proc``, the node's own
instance directories), never over the bus, so a busy service cannot delay a heartbeat
into a false OFFLINE.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

from shared.bus import Bus
from shared.cluster import Member, Resources, heartbeat_interval, open_members
from shared.config import Config
from shared.log import get_logger
from shared.state import Store

log = get_logger(component="membership")

# Fields of the record the API edits (PUT /1.0/cluster/members/<name>); a heartbeat keeps
# them and refreshes the rest.
EDITABLE = ("description", "failure_domain", "config", "groups", "evacuated",
            "evacuated_instances")  # evacuate.py


def _meminfo() -> tuple[int, int]:
    """MemTotal and MemAvailable in bytes."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def _local_instances(corral_dir: Path) -> int:
    """Instances whose files live on this node: the LXC and VM directories the instance
    service keeps under its CORRAL_DIR (one a node), counted without asking it."""
    count = 0
    for sub in ("lxc", "virtual-machines"):
        try:
            count += sum(1 for e in os.scandir(corral_dir / sub) if e.is_dir())
        except OSError:
            continue
    return count


def describe(config: Config) -> Member:
    """This node's member record as of now."""
    total, free = _meminfo()
    address = os.environ.get("CORRAL_CLUSTER_ADDRESS", "")
    return Member(
        name=config.node,
        url=f"https://{address}" if address else "",
        failure_domain=os.environ.get("CORRAL_FAILURE_DOMAIN", "default"),
        architecture=platform.machine(),
        heartbeat=time.time(),
        resources=Resources(cpus=os.cpu_count() or 1, memory_total=total, memory_free=free,
                            instances=_local_instances(config.dir)),
    )


class Membership:
    """Writes this node's record at start, then every ``heartbeat_interval()`` seconds."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config = config
        self.bus = bus
        self.store: Store | None = None
        self._task: asyncio.Task[None] | None = None
        self._removed_logged = False

    async def start(self) -> None:
        if not self.config.cluster:
            return
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def members_store(self) -> Store:
        """The open ``members`` bucket (opened once, kept)."""
        if self.store is None:
            self.store = await open_members(self.bus)
        return self.store

    async def beat(self) -> bool:
        """Write the record; False (nothing written) when `lxc cluster remove` left a
        tombstone for this node: it is no member until it joins again with a token."""
        store = await self.members_store()
        member = describe(self.config)
        found = await store.get(member.name)
        if found is not None and found[0].get("removed"):
            if not self._removed_logged:
                log.error("this node was removed from the cluster; join again with a token",
                          node=member.name)
                self._removed_logged = True
            return False
        self._removed_logged = False
        if found is not None:  # what the API set stays (lxc cluster set/edit)
            for field in EDITABLE:
                if field in found[0]:
                    setattr(member, field, found[0][field])
            member = Member.model_validate(member.model_dump())
        # Compare-and-set: a tombstone or an edit written since the read is never lost.
        if found is None:
            await store.create(member.name, member.model_dump(), what="Member")
        else:
            await store.update(member.name, member.model_dump(), found[1])
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # JetStream without quorum for a moment: next beat
                log.warning("heartbeat not written", error=str(exc))
            await asyncio.sleep(heartbeat_interval())
