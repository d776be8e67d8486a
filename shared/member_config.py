"""Objects defined per cluster member, LXD's way: storage pools and networks.

A record made through the cluster path holds, under ``members``, each member's own keys
(``--target``), its status (Pending, then Created or Errored with the reason) and what the
member made. The storage and network services build and remove their own objects
(``services/storage/pool_members.py``, ``services/network/network_members.py``); the
record's rules, the same for both, are here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import cluster, presence
from .bus import Bus
from .errors import BadRequest, CorralError, NotFound, Unavailable
from .models import CreateRequest, Reply

CREATED, PENDING, ERRORED = "Created", "Pending", "Errored"
# While a member works on its part, its service process is pinged every WATCH_EVERY s
# and declared gone after WATCH_GRACE s without a responder.
WATCH_EVERY, WATCH_GRACE = 1.0, 3.0


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


async def ask_member(bus: Bus, svc: str, verb: str, body: dict[str, Any], node: str,
                     timeout: float) -> Reply:
    """``corral.node.<node>.<svc>.<verb>``, watching that the member's service lives.

    Why: a member whose service dies while making its part never answers, and the
    caller would wait out ``timeout`` (minutes for a pool) before recording it Errored.
    A dead micro instance is a "no responders" at once (shared/presence.py), so the
    member is Errored (503) within seconds and the same create can be run again."""
    service = f"corral-{svc}"
    callee = await presence.instance_on(bus, service, node)
    call = asyncio.ensure_future(bus.request(svc, verb, CreateRequest(body=body),
                                             node=node, timeout=timeout))
    missing = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=WATCH_EVERY)
            if done:
                return call.result()
            if callee is None or await presence.alive(bus, service, callee):
                missing = 0.0
                continue
            missing += WATCH_EVERY
            if missing >= WATCH_GRACE:
                raise Unavailable(f"the {svc} service of member {node!r} stopped while "
                                  "making its part (its process is gone)")
    finally:
        if not call.done():
            call.cancel()
        await asyncio.gather(call, return_exceptions=True)


async def apply_everywhere(bus: Bus, kind: str, name: str, members: list[str],
                           one: Any) -> None:
    """Run ``one(member)`` for each member side by side (a config change each member
    applies to its own pool or bridge); raise the failures named per member, as LXD's
    cluster notifier does (an offline member is a 503: it applies the record's config at
    its next start)."""
    online = {m.name for m in await cluster.read_members(bus) if cluster.is_online(m)}
    failed: dict[str, CorralError] = {}

    async def run(member: str) -> None:
        try:
            if member not in online:
                raise Unavailable(f"member {member!r} is offline")
            await one(member)
        except CorralError as exc:
            failed[member] = exc

    await asyncio.gather(*(run(m) for m in sorted(members)))
    if failed:
        codes = {e.code for e in failed.values()}
        why = "; ".join(f"{m}: {e.message}" for m, e in sorted(failed.items()))
        raise CorralError(f"The {kind} {name!r} was updated, but not on every member "
                          f"({why}); those apply it at their next start, or run the "
                          "same change again", codes.pop() if len(codes) == 1 else 500)


def split_update(config: dict[str, str], current: dict[str, str], keys: tuple[str, ...],
                 target: str | None, kind: str) -> None:
    """LXD's rule for a change of a clustered object: with ``--target`` only member
    keys may change, without it none may (400 naming the key)."""
    changed = sorted(k for k in set(config) | set(current)
                     if config.get(k) != current.get(k))
    for k in changed:
        if target is not None and k not in keys:
            raise BadRequest(f"Config key {k!r} may not be used as member-specific key "
                             f"(only {', '.join(keys)}): set it without --target, "
                             f"for every member of the {kind}")
        if target is None and k in keys:
            raise BadRequest(f"Config key {k!r} is cluster member specific: set it with "
                             "--target MEMBER")
