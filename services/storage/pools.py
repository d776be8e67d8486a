"""Storage pools: records in the ``storage_pools`` KV bucket, disks through the drivers.

The KV record says which pools this node should have; the host says whether they are
usable. A pool whose mount fails is kept (never dropped from KV) and reported as
``Unavailable`` with the reason, and every later use tries to mount it again, so a
repaired disk comes back without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shared import faults, member_config
from shared.api import check_etag, etag, string_map, url, validate_object_name
from shared.api import description as check_description
from shared.errors import BadRequest, Conflict, CorralError, NotFound, Unavailable
from shared.log import get_logger
from shared.state import Store, key

from . import pool_members, pool_update
from .drivers import DRIVERS, Driver, load_driver
from .drivers.util import validate_name

CREATED, PENDING, UNAVAILABLE = "Created", "Pending", "Unavailable"
log = get_logger(component="storage")


def pool_etag(rec: dict[str, Any]) -> str:
    """LXD hashes name, driver and config (not the description) for a pool's ETag."""
    return etag(rec["name"], rec["driver"], rec.get("config", {}))


def trusted_driver(rec: dict[str, Any], corral_dir: Path) -> Driver:
    """A driver view of a stored pool. The config was validated at create; if it no longer
    validates (e.g. its loop file vanished, which makes ``size`` look misplaced) we still
    need the driver to unmount or delete the pool, so it is rebuilt without the checks."""
    cls = load_driver(rec["driver"])
    try:
        return cls(rec["name"], rec.get("config", {}), corral_dir)
    except BadRequest:
        drv = cls.__new__(cls)
        drv.pool, drv.corral_dir, drv.config = rec["name"], corral_dir, dict(rec["config"])
        return drv


class Pools:
    def __init__(self, store: Store, corral_dir: Path, node: str | None = None,
                 bus: Any = None) -> None:
        self.store = store
        self.dir = corral_dir
        self.node = node  # in a cluster: this member (pools are per member, pool_members)
        self.bus = bus
        self.unavailable: dict[str, str] = {}  # pool -> why it cannot be mounted
        self._busy: dict[str, int] = {}        # pool -> volume operations running
        self._deleting: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- reading -------------------------------------------------------------------------

    async def get(self, name: str) -> tuple[dict[str, Any], int]:
        found = await self.store.get(key(name))
        if found is None:
            raise NotFound(f"Storage pool {name!r} not found")
        return found

    def records(self) -> list[dict[str, Any]]:
        return sorted(self.store.cached(), key=lambda r: r["name"])

    def status(self, rec: dict[str, Any]) -> str:
        if rec["name"] in self.unavailable:
            return UNAVAILABLE
        return rec.get("status", CREATED)

    def view(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The record as this node uses it (in a cluster: its own member entry)."""
        return pool_members.local_view(rec, self.node) if self.node else rec

    def public(self, rec: dict[str, Any], used_by: list[str],
               target: str | None = None) -> dict[str, Any]:
        """LXD's StoragePool object."""
        out = {"config": rec.get("config", {}), "description": rec.get("description", ""),
               "name": rec["name"], "driver": rec["driver"], "used_by": used_by,
               "status": self.status(rec), "locations": ["none"]}
        if self.node:
            out.update(pool_members.public_fields(rec, target))
        return out

    @staticmethod
    def url(name: str) -> str:
        return url("storage-pools", name)

    # ---- usage guards --------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def available(self, rec: dict[str, Any]) -> Driver:
        """The pool's driver, mounting the pool first if it was unavailable."""
        rec = self.view(rec)
        drv = trusted_driver(rec, self.dir)
        if rec.get("status", CREATED) != CREATED:
            why = (f"not created on member {self.node!r} (lxc storage create "
                   f"{rec['name']} {rec['driver']})" if self.node and
                   pool_members.clustered(rec) else "being created")
            raise Unavailable(f"Storage pool {rec['name']!r} is not ready: "
                              f"{self.unavailable.get(rec['name'], why)}")
        if rec["name"] in self.unavailable:
            try:
                await asyncio.to_thread(drv.mount)
            except (CorralError, OSError) as exc:
                reason = getattr(exc, "message", str(exc))
                self.unavailable[rec["name"]] = reason
                raise Unavailable(f"Storage pool {rec['name']!r} is unavailable: {reason}"
                                  ) from exc
            self.unavailable.pop(rec["name"], None)
            log.info("storage pool mounted again", pool=rec["name"])
        return drv

    @asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[Driver]:
        """Hold the pool for a volume operation: a pool delete waits for none and refuses
        while any runs (409), and no volume operation starts on a pool being deleted."""
        rec, _rev = await self.get(name)
        if name in self._deleting:
            raise Conflict(f"Storage pool {name!r} is being deleted")
        drv = await self.available(rec)
        self._busy[name] = self._busy.get(name, 0) + 1
        try:
            yield drv
        finally:
            self._busy[name] -= 1

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Hold the pool for a delete: no volume operation may run or start meanwhile."""
        async with self._lock(name):
            rec, _rev = await self.get(name)
            if self._busy.get(name):
                raise Conflict(f"Storage pool {name!r} is busy with volume operations; "
                               "try again when they finish")
            self._deleting.add(name)
            try:
                yield rec
            finally:
                self._deleting.discard(name)

    # ---- lifecycle -----------------------------------------------------------------------

    async def create(self, body: dict[str, Any], target: str | None = None
                     ) -> dict[str, Any]:
        """Validate everything first (400, nothing made), reserve the name in KV (409),
        then make the pool on disk; a failure there drops the reservation again."""
        if self.node:
            return await self.create_in_cluster(body, target)
        name, cls, config, description = _create_body(body)
        await asyncio.to_thread(cls.check_host)
        drv = cls(name, config, self.dir)
        rec = {"name": name, "driver": cls.name, "description": description,
               "config": drv.config, "status": PENDING}
        await self.store.create(key(name), rec, f"Storage pool {name!r}")
        try:
            async with self._lock(name):
                rec["config"] = await asyncio.to_thread(drv.create)
        except BaseException:
            await self.store.delete(key(name))
            raise
        rec["status"] = CREATED
        await self.store.put(key(name), rec)
        self.unavailable.pop(name, None)
        return rec

    async def update(self, name: str, body: dict[str, Any], expected_etag: str | None,
                     patch: bool, target: str | None = None) -> dict[str, Any]:
        """PUT/PATCH: description, plus the config keys a driver can change live."""
        async with self._lock(name):
            rec, rev = await self.get(name)
            check_etag(expected_etag, pool_etag(rec))
            if self.node and pool_members.clustered(rec):
                return await self.update_in_cluster(rec, rev, body, patch, target)
            if target is not None:
                raise BadRequest("This server is not clustered: no --target")
            new = dict(rec)
            if "description" in body or not patch:
                new["description"] = check_description(body.get("description"))
            if "config" in body or not patch:
                cfg = string_map("config", body.get("config"))
                cls = load_driver(rec["driver"])
                current = rec.get("config", {})
                wanted = pool_update.merge_config(cls, current, cfg, patch)
                if wanted != current:
                    drv = await self.available(rec)
                    await asyncio.to_thread(pool_update.apply, drv, current, wanted)
                new["config"] = wanted
            await self.store.update(key(name), new, rev)
            return new

    async def delete(self, rec: dict[str, Any]) -> None:
        """Remove the pool from disk and KV; the caller holds ``exclusive`` and checked use."""
        if self.node and pool_members.clustered(rec):
            await pool_members.forget_everywhere(self.bus, rec, self.member_delete)
            await self.store.delete(key(rec["name"]))
            self.unavailable.pop(rec["name"], None)
            return
        drv = trusted_driver(rec, self.dir)
        await asyncio.to_thread(drv.delete)
        await self.store.delete(key(rec["name"]))
        self.unavailable.pop(rec["name"], None)

    async def resources(self, name: str) -> dict[str, Any]:
        rec, _rev = await self.get(name)
        drv = await self.available(rec)
        return await asyncio.to_thread(drv.resources)

    async def reconcile(self) -> None:
        """On start: mount every known pool; failures mark the pool Unavailable."""
        if self.node:
            await self.undo_interrupted()
        for rec in self.records():
            name = rec["name"]
            if self.node and pool_members.clustered(rec):
                if rec.get("status") == CREATED and self.node not in rec["members"]:
                    rec = await self.join(rec)  # a member that joined after the create
                rec = self.view(rec)  # never another member's source
                if rec["status"] != CREATED:
                    continue  # not made on this member (yet): nothing to mount
            if rec.get("status", CREATED) != CREATED:
                self.unavailable[name] = ("its creation was interrupted; delete the pool "
                                          "and create it again")
                continue
            try:
                drv = trusted_driver(rec, self.dir)
                mounted = await asyncio.to_thread(drv.mount)
                self.unavailable.pop(name, None)
                if mounted:
                    log.info("storage pool mounted", pool=name)
            except (CorralError, OSError) as exc:
                reason = getattr(exc, "message", str(exc))
                self.unavailable[name] = reason
                log.warning("storage pool unavailable", pool=name, reason=reason)

    # ---- in a cluster (pool_members) -------------------------------------------------------

    async def create_in_cluster(self, body: dict[str, Any], target: str | None
                                ) -> dict[str, Any]:
        """``--target M``: record M's own keys, Pending; without: every member makes its
        own pool, and the record says per member Created or Errored (see pool_members)."""
        name, cls, config, description = _create_body(body)
        async with self._lock(name):
            found = await self.store.get(key(name))
            if found is not None and not pool_members.clustered(found[0]):
                raise Conflict(f"Storage pool {name!r} already exists")
            if found is not None and found[0]["driver"] != cls.name:
                raise BadRequest(f"Storage pool {name!r} is defined with driver "
                                 f"{found[0]['driver']!r}, not {cls.name!r}")
            if target is not None:
                await pool_members.check_member(self.bus, target)
                entry = pool_members.member_entry(config)
                cls(name, entry["config"], self.dir)  # the keys' values checked (400)
                if found is None:
                    rec = {"name": name, "driver": cls.name, "description": description,
                           "config": {}, "status": PENDING, "members": {target: entry}}
                    await self.store.create(key(name), rec, f"Storage pool {name!r}")
                    return rec
                rec, rev = found
                if rec["members"].get(target, {}).get("status") == CREATED:
                    raise Conflict(f"Storage pool {name!r} is already created on member "
                                   f"{target!r}")
                rec = {**rec, "members": {**rec["members"], target: entry}}
                await self.store.update(key(name), rec, rev)
                return rec
            pool_members.check_global(config)
            cls(name, config, self.dir)
            if found is None:
                rec = {"name": name, "driver": cls.name, "description": description,
                       "config": config, "status": PENDING, "members": {}}
                await self.store.create(key(name), rec, f"Storage pool {name!r}")
            else:
                rec = found[0]
                if rec.get("status") == CREATED:
                    raise pool_members.already_created(name)
                rec = {**rec, "config": config, "description": description or
                       rec.get("description", "")}
            entries = await pool_members.realise_everywhere(self.bus, rec, self.member_create)
            ok = all(e["status"] == CREATED for e in entries.values())
            rec = {**rec, "members": entries, "status": CREATED if ok else "Errored"}
            await self.store.put(key(name), rec)
            self.unavailable.pop(name, None)
        pool_members.outcome(name, entries)
        return rec

    async def update_in_cluster(self, rec: dict[str, Any], rev: int, body: dict[str, Any],
                                patch: bool, target: str | None) -> dict[str, Any]:
        """As LXD: without ``--target`` the cluster-wide keys change and every member
        applies them to its own pool (this one first: if it cannot, nothing changes);
        with ``--target M`` only M's own keys (``size``: its loop file grows) and only
        M applies them. The record keeps the change even if some member failed (named in
        the error): that member mounts with it at its next start."""
        name = rec["name"]
        new = dict(rec)
        if "description" in body or not patch:
            new["description"] = check_description(body.get("description"))
        if target is not None:
            await pool_members.check_member(self.bus, target)
        if "config" in body or not patch:
            given = string_map("config", body.get("config"))
            current, wanted = pool_members.update_keys(rec, given, patch, target)
            if target is not None:
                if wanted != current:
                    await pool_members.apply_member(self.bus, target, {
                        "name": name, "driver": rec["driver"], "current": current,
                        "wanted": wanted}, self.member_update)
                entry = {**rec["members"][target],
                         "config": pool_members.own_keys(rec.get("config", {}), wanted)}
                new["members"] = {**rec["members"], target: entry}
            else:
                new["config"] = wanted
                new["members"] = pool_members.with_own_keys_only(rec)
                await self._apply_everywhere(rec, new)
                return new
        await self.store.update(key(name), new, rev)
        return new

    async def _apply_everywhere(self, rec: dict[str, Any], new: dict[str, Any]) -> None:
        """Every Created member applies the new cluster-wide config to its own pool."""
        def body(member: str) -> dict[str, Any]:
            return {"name": rec["name"], "driver": rec["driver"],
                    "current": pool_members.local_view(rec, member)["config"],
                    "wanted": pool_members.local_view(new, member)["config"]}

        todo = [m for m, e in rec["members"].items() if e.get("status") == CREATED
                and body(m)["current"] != body(m)["wanted"]]
        if self.node in todo:  # here first: a change this member refuses changes nothing
            await self.member_update(body(self.node))
            todo.remove(self.node)
        await self.store.put(key(rec["name"]), new)

        async def one(member: str) -> None:
            await pool_members.apply_member(self.bus, member, body(member),
                                            self.member_update)
        await member_config.apply_everywhere(self.bus, "storage pool", rec["name"], todo,
                                             one)

    async def member_update(self, body: dict[str, Any]) -> None:
        """Apply a config change to this member's own pool (``pool_member_update``): the
        member checks it against its own disk (a loop file to grow) and applies it."""
        cls = load_driver(body["driver"])
        try:  # compared with defaults filled in on both sides: a default is no change
            current = cls.validate_config(body["current"])
        except BadRequest:
            current = dict(body["current"])
        wanted = pool_update.merge_config(cls, current, body["wanted"], False)
        if wanted == current:
            return
        rec, _rev = await self.get(body["name"])
        drv = await self.available(rec)
        async with self._lock(f"member:{body['name']}"):
            await asyncio.to_thread(pool_update.apply, drv, current, wanted)

    async def member_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make this member's own pool (its loop file and mount under its own CORRAL_DIR);
        returns the config as made (``source`` filled in). Asked by the member that
        coordinates a cluster-wide create (``pool_member_create``). Journaled: a crash
        half-way is undone at the service's next start (pool_members, ``reconcile``)."""
        drv = load_driver(body["driver"])(body["name"], body.get("config") or {}, self.dir)
        async with self._lock(f"member:{body['name']}"):
            await asyncio.to_thread(pool_members.journal_begin, self.dir, body)
            try:
                made = await asyncio.to_thread(drv.create)  # a failure undoes itself
            except BaseException:
                pool_members.journal_end(self.dir, body["name"])
                raise
            faults.point(f"pool:member_made:{self.node}")
            pool_members.journal_end(self.dir, body["name"])
            return made

    async def undo_interrupted(self) -> None:
        """At start: undo a member create a crash cut short (its journal entry is left)
        unless the record says this member's part is Created."""
        for body in await asyncio.to_thread(pool_members.journal_left, self.dir):
            name = body["name"]
            found = await self.store.get(key(name))
            mine = ((found[0].get("members") or {}).get(self.node) or {}) if found else {}
            if mine.get("status") != CREATED:
                drv = trusted_driver(body, self.dir)
                loop = getattr(drv, "loop_file", None)
                ours = drv.path.exists() or (not body["config"].get("source") and
                                             loop is not None and loop.exists())
                try:
                    if ours:
                        await asyncio.to_thread(drv.delete)
                    log.warning("storage pool: an interrupted member create undone",
                                pool=name)
                except (CorralError, OSError) as exc:
                    log.error("storage pool: an interrupted member create not undone",
                              pool=name, error=getattr(exc, "message", str(exc)))
                    continue
            pool_members.journal_end(self.dir, name)

    async def member_delete(self, body: dict[str, Any]) -> None:
        """Unmount and remove this member's own pool (its part of a cluster-wide delete)."""
        rec = {"name": body["name"], "driver": body["driver"],
               "config": body.get("config") or {}}
        drv = trusted_driver(rec, self.dir)
        if body.get("if_made") and not drv.path.exists():
            return  # never made here (a failed create undoes itself): touch nothing
        async with self._lock(f"member:{body['name']}"):
            await asyncio.to_thread(drv.delete)
        self.unavailable.pop(body["name"], None)

    async def join(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A member that joined after the pool was created makes its own at its start, with
        the cluster-wide config (its loop file under its own CORRAL_DIR), and records its
        entry (compare-and-set: other members write theirs meanwhile)."""
        name = rec["name"]
        try:
            made = await self.member_create({"name": name, "driver": rec["driver"],
                                             "config": dict(rec.get("config", {}))})
            entry: dict[str, Any] = {"status": CREATED, "config": pool_members.own_keys(
                rec.get("config", {}), made)}
            log.info("storage pool made on this member (joined after its create)", pool=name)
        except (CorralError, OSError) as exc:
            entry = {"status": "Errored", "config": {},
                     "reason": getattr(exc, "message", str(exc))}
            log.warning("storage pool not made on this member", pool=name,
                        reason=entry["reason"])
        for _ in range(10):
            found = await self.store.get(key(name))
            if found is None:
                return rec
            cur, rev = found
            cur = {**cur, "members": {**cur["members"], self.node: entry}}
            if entry["status"] != CREATED:
                cur["status"] = "Errored"
            try:
                await self.store.update(key(name), cur, rev)
                return cur
            except Conflict:
                continue
        return rec


def _create_body(body: dict[str, Any]) -> tuple[str, Any, dict[str, str], str]:
    """A create's name, driver class, config and description, checked (400s)."""
    name = validate_name("storage pool", validate_object_name("storage pool",
                                                               body.get("name")))
    driver_name = body.get("driver")
    if not driver_name:
        raise BadRequest(f"No storage driver given: set 'driver' to one of "
                         f"{', '.join(sorted(DRIVERS))}")
    cls = load_driver(driver_name)
    return (name, cls, string_map("config", body.get("config")),
            check_description(body.get("description")))

