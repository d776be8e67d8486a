"""Cluster membership: who the nodes are, and which of them are alive.

LXD keeps its members in its Raft database and marks one OFFLINE when its heartbeat is
older than ``cluster.offline_threshold`` (20 s). Corral has no database of its own: each
node's gateway puts its :class:`Member` record in the replicated KV bucket ``members``
(key = node name) every few seconds, and anyone who reads the bucket judges liveness from
the heartbeat time alone (:func:`is_online`), so a node killed with SIGKILL turns OFFLINE
without anyone having to notice it dying.

This module is the interface other parts use (placement reads ``resources``); keep it
stable: :class:`Member`, :func:`read_members`, :func:`is_online`, :func:`online_members`.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from .bus import Bus
    from .state import Store

MEMBERS_BUCKET = "members"
# LXD's default cluster.offline_threshold (seconds without a heartbeat = OFFLINE).
OFFLINE_THRESHOLD = 20.0
# Seconds between two heartbeats of a node (LXD heartbeats every 10 s; we write a few KV
# bytes, so more often is cheap and a returning node shows ONLINE sooner).
HEARTBEAT_INTERVAL = 4.0
# LXD's member roles: every Corral node runs a NATS server holding the JetStream state
# (LXD's "database" role, shown as "database" in `lxc cluster list`).
DATABASE_ROLE = "database"


class Resources(BaseModel):
    """What a node has free, for placement (LXD's scheduler looks at the same facts)."""

    cpus: int = 0
    memory_total: int = 0  # bytes
    memory_free: int = 0  # bytes (MemAvailable)
    instances: int = 0  # instances located on the node


class Member(BaseModel):
    """One node of the cluster, as its own gateway last described it."""

    name: str
    url: str = ""
    roles: list[str] = Field(default_factory=lambda: [DATABASE_ROLE])
    failure_domain: str = "default"
    architecture: str = ""
    description: str = ""
    heartbeat: float = 0.0  # unix time of the last heartbeat
    resources: Resources = Field(default_factory=Resources)
    # Set through the API (`lxc cluster set/edit`), kept by the heartbeats: LXD's member
    # config (``scheduler.instance``, ``user.*``) and cluster groups.
    config: dict[str, str] = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=lambda: ["default"])
    # `lxc cluster evacuate` (LXD's EVACUATED member state: placement skips the member),
    # and the instances the evacuation stopped, "project/name", which restore starts again.
    # Kept here because the gateway that evacuates may not write instance records (where
    # LXD keeps ``volatile.last_state.power``); services/gateway/evacuate.py.
    evacuated: bool = False
    evacuated_instances: list[str] = Field(default_factory=list)

    @property
    def database(self) -> bool:
        return DATABASE_ROLE in self.roles


def offline_threshold() -> float:
    """``CORRAL_CLUSTER_OFFLINE_THRESHOLD`` seconds (LXD's 20 s by default; tests use a
    few seconds so a killed node shows OFFLINE quickly)."""
    return _env_float("CORRAL_CLUSTER_OFFLINE_THRESHOLD", OFFLINE_THRESHOLD, 1.0)


def heartbeat_interval() -> float:
    """``CORRAL_CLUSTER_HEARTBEAT`` seconds between heartbeats, never more than a third of
    the offline threshold (a live node must not blink OFFLINE between two beats)."""
    return min(_env_float("CORRAL_CLUSTER_HEARTBEAT", HEARTBEAT_INTERVAL, 0.2),
               offline_threshold() / 3)


def _env_float(name: str, default: float, minimum: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        value = default
    return max(minimum, value)


def is_online(member: Member, now: float | None = None,
              threshold: float | None = None) -> bool:
    """True while the member's heartbeat is younger than the offline threshold."""
    now = time.time() if now is None else now
    threshold = offline_threshold() if threshold is None else threshold
    return now - member.heartbeat < threshold


def status_of(member: Member, now: float | None = None,
              threshold: float | None = None) -> tuple[str, str]:
    """LXD's ``status`` and ``message`` of a member (Evacuated before Offline, as LXD)."""
    if member.evacuated:
        return "Evacuated", "Unavailable due to maintenance"
    if is_online(member, now, threshold):
        return "Online", "Fully operational"
    age = (time.time() if now is None else now) - member.heartbeat
    return "Offline", f"No heartbeat for {age:.0f}s"


async def open_members(bus: "Bus") -> "Store":
    """The ``members`` bucket (made with the configured replicas when missing)."""
    from .state import Store

    return await Store(bus, MEMBERS_BUCKET, history=1,
                       description="corral cluster members (heartbeats)").open()


async def read_members(source: "Bus | Store") -> list[Member]:
    """Every member record, sorted by name. ``source``: a bus (the bucket is opened) or an
    open :class:`~shared.state.Store` of ``members`` (a caller reading often keeps one)."""
    store = source if hasattr(source, "items") else await open_members(source)  # type: ignore[arg-type]
    items: dict[str, dict[str, Any]] = await store.items()  # type: ignore[union-attr]
    members = []
    for value in items.values():
        if value.get("removed"):  # a tombstone of `lxc cluster remove`: not a member
            continue
        try:
            members.append(Member.model_validate(value))
        except ValueError:  # a record from another version: skip rather than fail lists
            continue
    return sorted(members, key=lambda m: m.name)


async def online_members(source: "Bus | Store", now: float | None = None) -> list[Member]:
    """The members whose heartbeat is fresh (placement chooses among these)."""
    return [m for m in await read_members(source) if is_online(m, now)]
