"""Objects defined per cluster member, LXD's way: storage pools and networks.

A record made through the cluster path holds, under ``members``, each member's own keys
(``--target``), its status (Pending, then Created or Errored with the reason) and what the
member made. The storage and network services build and remove their own objects
(``services/storage/pool_members.py``, ``services/network/network_members.py``); the
record's rules, the same for both, are here.
"""

from __future__ import annotations

from typing import Any

from . import cluster
from .bus import Bus
from .errors import BadRequest, CorralError, NotFound

CREATED, PENDING, ERRORED = "Created", "Pending", "Errored"


def clustered(rec: dict[str, Any]) -> bool:
    """A record made through the cluster path (it has per-member entries)."""
    return isinstance(rec.get("members"), dict)


def local_view(rec: dict[str, Any], node: str) -> dict[str, Any]:
    """The object as member ``node`` sees it: the cluster-wide config with the member's
    own keys over it, and the member's status. A member with no entry has it Pending."""
    if not clustered(rec):
        return rec
    mine = rec["members"].get(node) or {}
    return {**rec, "config": {**rec.get("config", {}), **mine.get("config", {})},
            "status": mine.get("status", PENDING)}


def public_fields(rec: dict[str, Any], target: str | None, kind: str) -> dict[str, Any]:
    """``locations``, and for ``?target=`` that member's config and status (LXD);
    ``kind`` names the object in the 404 (``Storage pool``, ``Network``)."""
    if not clustered(rec):
        return {}
    if target is None:
        return {"locations": sorted(rec["members"])}
    if target not in rec["members"]:
        raise NotFound(f"{kind} {rec['name']!r} is not defined on member {target!r}")
    view = local_view(rec, target)
    return {"locations": [target], "config": view["config"], "status": view["status"]}


def member_entry(config: dict[str, str], keys: tuple[str, ...]) -> dict[str, Any]:
    """A member's own keys from a config given with ``--target`` (400 for any not in
    ``keys``)."""
    other = sorted(k for k in config if k not in keys)
    if other:
        raise BadRequest(f"Config key {other[0]!r} may not be used as member-specific key: "
                         f"only {', '.join(keys)} are given per member")
    return {"status": PENDING, "config": dict(config)}


async def check_member(bus: Bus, target: str) -> None:
    names = [m.name for m in await cluster.read_members(bus)]
    if target not in names:
        raise BadRequest(f"Invalid target {target!r}: not a cluster member "
                         f"(members: {', '.join(names) or 'none'})")


def outcome(kind: str, name: str, entries: dict[str, dict[str, Any]]) -> None:
    """Raise the members' failures (their own code when they agree, else 500); ``kind``
    names the object (``storage pool``, ``network``)."""
    bad = {n: e for n, e in sorted(entries.items()) if e.get("status") != CREATED}
    if not bad:
        return
    codes = {e.get("code", 500) for e in bad.values()}
    why = "; ".join(f"{n}: {e.get('reason', 'not created')}" for n, e in bad.items())
    raise CorralError(f"Failed to create {kind} {name!r} on member(s) {why} (fix it and "
                      "run the same create again: only those members retry)",
                      codes.pop() if len(codes) == 1 else 500)
