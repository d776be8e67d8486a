"""Storage pools in a cluster: defined per member, then made on every member (LXD's way).

``lxc storage create p btrfs size=2GiB --target node2`` records what is particular to
node2 (its ``source``, its ``size``) with the member in state Pending; nothing touches a
disk. ``lxc storage create p btrfs`` then asks every member's storage service
(``corral.node.<member>.storage.pool_member_create``) to make *its own* pool: its loop
file under its own ``CORRAL_DIR``, its own mount. Each answer lands in the record under
``members``: Created, or Errored with the reason; the pool is Created when every member
is, else Errored, and the same command again retries the members that failed.

Why per member: a node shares the ``storage_pools`` bucket with the others, and a pool
made by one node and mounted by all from the same record would mount one loop image
twice, or bind-mount another host's directory. A node uses only its own member entry
(:func:`local_view`) and never mounts a pool it has no Created entry for.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from shared import cluster, member_config
from shared.bus import Bus
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.member_config import (  # noqa: F401 (this module's API, as the service uses it)
    CREATED,
    ERRORED,
    PENDING,
    check_member,
    clustered,
    local_view,
)
from shared.models import CreateRequest

from . import pool_update
from .drivers import load_driver

# Keys that name something on one host: given per member (--target), never cluster-wide.
MEMBER_ONLY = ("source",)
# Keys a member may set for itself besides those (its own loop file's size).
MEMBER_KEYS = (*MEMBER_ONLY, "size")
# Seconds a member may take to format and mount its pool.
MEMBER_TIMEOUT = 120.0


def public_fields(rec: dict[str, Any], target: str | None) -> dict[str, Any]:
    return member_config.public_fields(rec, target, "Storage pool")


def member_entry(config: dict[str, str]) -> dict[str, Any]:
    return member_config.member_entry(config, MEMBER_KEYS)


def check_global(config: dict[str, str]) -> None:
    for k in MEMBER_ONLY:
        if k in config:
            raise BadRequest(f"Config key {k!r} is cluster member specific: give it per "
                             f"member first (lxc storage create POOL DRIVER {k}=... "
                             "--target MEMBER)")


async def realise_everywhere(bus: Bus, rec: dict[str, Any], local: Any
                             ) -> dict[str, dict[str, Any]]:
    """Ask every member to make its own pool (``local`` makes this node's without the bus);
    return the new member entries. A member already Created is left alone."""
    members = await cluster.read_members(bus)
    online = {m.name for m in members if cluster.is_online(m)}
    entries: dict[str, dict[str, Any]] = {n: dict(e) for n, e in rec["members"].items()}

    async def one(name: str) -> None:
        entry = entries.get(name) or {"status": PENDING, "config": {}}
        if entry.get("status") == CREATED:
            return
        config = {**rec.get("config", {}), **entry.get("config", {})}
        body = {"name": rec["name"], "driver": rec["driver"], "config": config}
        try:
            if name not in online:
                raise CorralError(f"member {name!r} is offline", 503)
            if name == bus.config.node:
                made = await local(body)
            else:
                reply = await member_config.ask_member(bus, "storage", "pool_member_create",
                                                       body, name, MEMBER_TIMEOUT)
                made = reply.metadata or {}
            entries[name] = {"status": CREATED, "config": own_keys(rec.get("config", {}),
                                                                   made)}
        except CorralError as exc:
            entries[name] = {**entry, "status": ERRORED, "reason": exc.message,
                             "code": exc.code}

    await asyncio.gather(*(one(m.name) for m in members))
    return entries


async def forget_everywhere(bus: Bus, rec: dict[str, Any], local: Any) -> None:
    """Delete every member's own pool; a Created member that cannot is a 503 and the
    record is kept (the delete is retried whole: the drivers' delete tolerates a pool
    already gone). A member not Created is asked too, best effort: a create cut short
    (the coordinating member died before recording the answers) may have left its loop
    file and mount there."""
    online = {m.name for m in await cluster.read_members(bus) if cluster.is_online(m)}
    failed: list[str] = []
    for name, entry in sorted(rec["members"].items()):
        made = entry.get("status") == CREATED
        body = {"name": rec["name"], "driver": rec["driver"],
                "config": local_view(rec, name)["config"], "if_made": not made}
        try:
            if name == bus.config.node:
                await local(body)
            elif name not in online:
                raise CorralError(f"member {name!r} is offline", 503)
            else:
                await bus.request("storage", "pool_member_delete", CreateRequest(body=body),
                                  node=name, timeout=MEMBER_TIMEOUT)
        except CorralError as exc:
            if made:
                failed.append(f"{name}: {exc.message}")
    if failed:
        raise CorralError(f"Storage pool {rec['name']!r} could not be deleted on every "
                          f"member ({'; '.join(failed)}); try again once they are online",
                          503)


def update_keys(rec: dict[str, Any], given: dict[str, str], patch: bool,
                target: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """A PUT/PATCH of a clustered pool's config: the config asked for in the scope
    changed (the cluster-wide config, or with ``--target`` that member's view) and the
    scope's current one; 400 for a key that cannot change in that scope (LXD's rule).
    Keys a PUT leaves out that cannot be unset (``source``, ``size``) keep their value."""
    if target is not None and target not in rec["members"]:
        raise NotFound(f"Storage pool {rec['name']!r} is not defined on member {target!r}")
    current = local_view(rec, target)["config"] if target else dict(rec.get("config", {}))
    wanted = {**current, **given} if patch else dict(given)
    for k in MEMBER_KEYS:
        if k in current and k not in wanted:
            wanted[k] = current[k]
    member_config.split_update(wanted, current, MEMBER_KEYS, target, "storage pool")
    if target is None:
        _check_global_change(rec["driver"], current, wanted)
    return current, wanted


def _check_global_change(driver: str, current: dict[str, str],
                         wanted: dict[str, str]) -> None:
    """400 unless the cluster-wide config asked for is valid and changes only keys a
    pool can change live. Kept as given (no defaults filled in): each member fills them
    the same way from its own view."""
    cls = load_driver(driver)
    cls.validate_config(wanted)
    live = pool_update.LIVE.get(cls.name, set())
    bad = sorted(k for k in set(wanted) | set(current) if wanted.get(k) != current.get(k)
                 and k not in live and not k.startswith("user."))
    if bad:
        raise BadRequest(f"Config key(s) {', '.join(bad)} of a {cls.name} pool cannot be "
                         f"changed after creation (keys that can: "
                         f"{', '.join(sorted(live)) or 'none'})")


def own_keys(global_config: dict[str, str], view: dict[str, str]) -> dict[str, str]:
    """A member's entry config: its member keys where they differ from the cluster-wide
    config. Only those: a default the driver filled in (``btrfs.mount_options``) kept
    per member would hide a later cluster-wide change of it."""
    return {k: v for k, v in view.items() if k in MEMBER_KEYS and global_config.get(k) != v}


def with_own_keys_only(rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The members' entries with only member keys (records made before the rule above
    held defaults per member)."""
    return {n: {**e, "config": {k: v for k, v in e.get("config", {}).items()
                                if k in MEMBER_KEYS}}
            for n, e in rec["members"].items()}


async def apply_member(bus: Bus, node: str, body: dict[str, Any], local: Any) -> None:
    """Have member ``node`` apply a config change to its own pool (``local`` here)."""
    if node == bus.config.node:
        await local(body)
    else:
        await member_config.ask_member(bus, "storage", "pool_member_update", body, node,
                                       MEMBER_TIMEOUT)


# -- the journal of a member's own create ------------------------------------------------
# Why: a member's storage service killed while it makes its part (loop file formatted,
# mounted, not yet answered) leaves things the record never names: the coordinator
# records the member Errored, and a retry would find the loop file (409). The member
# writes what it is about to make first and removes it once made; at its next start
# (``Pools.reconcile``) anything still in the journal that the record does not say is
# Created on this member is undone.

def _journal(corral_dir: Path, name: str) -> Path:
    return corral_dir / "journal" / f"pool-member-{name}.json"


def journal_begin(corral_dir: Path, body: dict[str, Any]) -> None:
    path = _journal(corral_dir, body["name"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: body.get(k) for k in ("name", "driver", "config")}))
    os.replace(tmp, path)


def journal_end(corral_dir: Path, name: str) -> None:
    _journal(corral_dir, name).unlink(missing_ok=True)


def journal_left(corral_dir: Path) -> list[dict[str, Any]]:
    """The member creates a crash cut short."""
    out = []
    for path in sorted((corral_dir / "journal").glob("pool-member-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    return out


def outcome(name: str, entries: dict[str, dict[str, Any]]) -> None:
    member_config.outcome("storage pool", name, entries)


def already_created(name: str) -> Conflict:
    return Conflict(f"Storage pool {name!r} already exists (Created on every member)")
