"""Managed networks: their KV records, LXD's shapes, and the steps of each change.

A record is ``{name, type, description, config, project, status, status_reason}``; the
config is the effective one the driver returned (``ipv4.address=auto`` already resolved),
so a restart rebuilds exactly the same network. Bridges are host-global kernel objects, so
networks are global too (LXD's default project); the KV key is the name alone.

Changes are serialised by one lock: they are rare, and a bridge half-built by one request
must not be seen by another. Every driver call blocks, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from shared import faults, member_config
from shared.api import check_etag, description, etag, string_map, url
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.log import get_logger
from shared.state import Store, key

from . import host, network_members, overlay
from .drivers import NetworkDriver, load, validate_network_name
from .drivers.base import AnyNetwork
from .drivers.bridge_config import gateway, gateway6

log = get_logger(component="network")
LOCATIONS = ["none"]  # a standalone server, as LXD says


def network_etag(rec: dict[str, Any]) -> str:
    return etag(rec["name"], True, rec["type"], rec.get("description", ""), rec["config"])


def public(rec: dict[str, Any], used_by: list[str]) -> dict[str, Any]:
    """LXD's network object for a managed network."""
    out = {"name": rec["name"], "description": rec.get("description", ""),
           "type": rec["type"], "managed": True, "status": rec.get("status", "Created"),
           "config": rec["config"], "used_by": used_by, "locations": LOCATIONS}
    if rec.get("status_reason"):
        out["status_reason"] = rec["status_reason"]  # not LXD's: says why it is Errored
    return out


def unmanaged(name: str, type_: str, used_by: list[str]) -> dict[str, Any]:
    """LXD's object for a host interface Corral does not manage."""
    return {"name": name, "description": "", "type": type_, "managed": False, "status": "",
            "config": {}, "used_by": [] if type_ == "loopback" else used_by,
            "locations": None}


class Networks:
    def __init__(self, store: Store, corral_dir: Path, node: str | None = None,
                 bus: Any = None) -> None:
        self.store = store
        self.corral_dir = corral_dir
        self.node = node  # in a cluster: this member (network_members, overlay)
        self.bus = bus
        self.lock = asyncio.Lock()
        # What lives beside a network's own objects (ACL and forward tables): the service
        # sets these; ``check`` refuses a config (400), ``up`` rebuilds them after the
        # network is built or changed, ``gone`` removes them with the network.
        self.check: Callable[[dict[str, str]], None] = lambda config: None
        self.up: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.gone: Callable[[str], Awaitable[None]] | None = None
        # 400 unless every named network ACL exists (a NIC's security.acls).
        self.acl_check: Callable[[list[str], str], None] = lambda names, where: None

    def view(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The record as this member builds it (in a cluster: with its own keys)."""
        return network_members.local_view(rec, self.node) if self.node else rec

    def driver(self, rec: dict[str, Any], name: str | None = None) -> NetworkDriver:
        return load(name or rec["name"], rec["type"], self.view(rec)["config"],
                    self.corral_dir)

    def records(self) -> list[dict[str, Any]]:
        return sorted(self.store.cached(), key=lambda r: r["name"])

    async def get(self, name: str) -> tuple[dict[str, Any], int]:
        found = await self.store.get(key(name))
        if found is None:
            raise NotFound(f"Network {name!r} not found")
        return found

    def find(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r["name"] == name), None)

    def taken(self, exclude: str | None = None) -> list[AnyNetwork]:
        """Subnets (v4 and v6) of the other managed networks: a new one must not overlap."""
        out: list[AnyNetwork] = []
        for rec in self.records():
            if rec["name"] == exclude:
                continue
            for gw in (gateway(rec["config"]), gateway6(rec["config"])):
                if gw is not None:
                    out.append(gw.network)
        return out

    # -- changes ------------------------------------------------------------------------
    async def create(self, body: dict[str, Any], target: str | None = None
                     ) -> dict[str, Any]:
        if self.node:
            return await self.create_in_cluster(body, target)
        name = body.get("name")
        if not name:
            raise BadRequest("No network name provided")
        validate_network_name(name)
        rec = {"name": name, "type": body.get("type") or "bridge",
               "description": description(body.get("description")),
               "config": string_map("config", body.get("config")), "project": "default",
               "status": "Created"}
        drv = self.driver(rec)  # 400 for an unknown type
        drv.validate_config(rec["config"])  # 400 before anything is built
        self.check(rec["config"])
        async with self.lock:
            if self.find(name) is not None:
                raise Conflict(f"Network {name!r} already exists")
            rec["config"] = await asyncio.to_thread(drv.create, self.taken())
            try:
                await self.store.create(key(name), rec, f"Network {name!r}")
            except BaseException:
                await asyncio.to_thread(drv.delete)
                raise
            try:
                if self.up is not None:
                    await self.up(rec)
            except BaseException:
                if self.gone is not None:
                    await self.gone(name)
                await asyncio.to_thread(drv.delete)
                await self.store.delete(key(name))
                raise
        return rec

    async def update(self, name: str, body: dict[str, Any], expected: str | None,
                     patch: bool, target: str | None = None) -> dict[str, Any]:
        if self.node:
            current, rev = await self.get(name)
            if network_members.clustered(current):
                return await self.update_in_cluster(current, rev, body, expected, patch,
                                                    target)
        if target is not None:
            raise BadRequest("This server is not clustered: no --target")
        async with self.lock:
            current, rev = await self.get(name)
            check_etag(expected, network_etag(current))
            new = dict(current)
            config = string_map("config", body.get("config"))
            if patch:
                new["config"] = {**current["config"], **config}
                if "description" in body:
                    new["description"] = description(body["description"])
            else:
                new["config"] = config
                new["description"] = description(body.get("description"))
            if new["config"] != current["config"]:
                self.check(new["config"])
                drv = self.driver(current)
                new["config"] = await asyncio.to_thread(drv.update, new["config"],
                                                        self.taken(exclude=name))
                new.update(status="Created", status_reason="")
                if self.up is not None:
                    try:
                        await self.up(new)
                    except BaseException:
                        await asyncio.to_thread(self.driver(new).update, current["config"],
                                                self.taken(exclude=name))
                        await self.up(current)
                        raise
            await self.store.update(key(name), new, rev)
            return new

    async def rename(self, name: str, new_name: Any, users: list[str]) -> dict[str, Any]:
        """Stop the network, move its state dir (leases), start it under the new name."""
        if not isinstance(new_name, str) or not new_name:
            raise BadRequest("No new network name provided")
        validate_network_name(new_name)
        if self.node and network_members.clustered((await self.get(name))[0]):
            raise BadRequest("Renaming a clustered network is not supported (as in LXD): "
                             "every member's bridge has its name")
        async with self.lock:
            rec, _rev = await self.get(name)
            if users:
                raise Conflict(f"Network {name!r} is in use by {', '.join(users)}; "
                               "it cannot be renamed")
            if self.find(new_name) is not None:
                raise Conflict(f"Network {new_name!r} already exists")
            if await asyncio.to_thread(host.interface_type, new_name) is not None:
                raise Conflict(f"An interface named {new_name!r} already exists on this host")
            renamed = {**rec, "name": new_name, "status": "Created", "status_reason": ""}
            old, new = self.driver(rec), self.driver(renamed)
            await asyncio.to_thread(self._move, old, new)
            try:
                await self.store.create(key(new_name), renamed, f"Network {new_name!r}")
            except BaseException:
                await asyncio.to_thread(self._move, new, old)
                raise
            await self.store.delete(key(name))
            if self.gone is not None:
                await self.gone(name)
            if self.up is not None:
                await self.up(renamed)
            return renamed

    @staticmethod
    def _move(old: NetworkDriver, new: NetworkDriver) -> None:
        old.stop()
        if old.state_dir.exists():
            new.state_dir.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old.state_dir, new.state_dir)
        try:
            new.start()
        except CorralError:
            if new.state_dir.exists():
                os.rename(new.state_dir, old.state_dir)
            old.start()
            raise

    async def delete(self, name: str, users: list[str]) -> None:
        rec, _rev = await self.get(name)
        if self.node and network_members.clustered(rec):
            if users:
                raise Conflict(f"Network {name!r} is in use by {', '.join(users)}")
            # each member (this one too: member_delete) takes its own lock
            await network_members.forget_everywhere(self.bus, rec, self.member_delete)
            await self.store.delete(key(name))
            return
        async with self.lock:
            rec, _rev = await self.get(name)
            if users:
                raise Conflict(f"Network {name!r} is in use by {', '.join(users)}")
            await asyncio.to_thread(self.driver(rec).delete)
            if self.gone is not None:
                await self.gone(name)
            await self.store.delete(key(name))

    # -- keeping networks up ------------------------------------------------------------
    async def start(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Bring one network up; record Created or Errored (with why). Never raises."""
        drv = self.driver(rec)
        status, reason = "Created", ""
        try:
            await asyncio.to_thread(drv.start)
            if self.up is not None:
                await self.up(rec)
            await self._overlay(rec)
        except Exception as exc:
            status, reason = "Errored", getattr(exc, "message", str(exc))
            log.error("network failed to start", network=rec["name"], error=reason)
        if self.node and network_members.clustered(rec):
            return await self._member_status(rec, status, reason)
        if (rec.get("status"), rec.get("status_reason", "")) != (status, reason):
            found = await self.store.get(key(rec["name"]))
            if found is not None:
                rec = {**found[0], "status": status, "status_reason": reason}
                await self.store.update(key(rec["name"]), rec, found[1])
        return rec

    async def reconcile(self) -> None:
        """At service start the host is the truth: recreate what a reboot or crash lost."""
        # Side by side: each network is its own bridge, nft table and dnsmasq, and one that
        # is slow to fail must not hold the service's start for the sum of every timeout.
        if self.node:
            for rec in self.records():
                if network_members.clustered(rec) and rec.get("status") == "Created" \
                        and self.node not in rec["members"]:
                    await self.join(rec)  # a member that joined after the create
        async with self.lock:
            await asyncio.gather(*(self.start(rec) for rec in self.records()
                                   if self.view(rec).get("status") != "Pending"))

    async def ensure_started(self, rec: dict[str, Any]) -> None:
        """Before a NIC joins: (re)start a network that is down; 503 if it cannot run."""
        if self.view(rec).get("status") == "Pending":
            raise CorralError(f"Network {rec['name']!r} is not created on member "
                              f"{self.node!r} (lxc network create {rec['name']})", 503)
        if self.view(rec).get("status") == "Created" and await asyncio.to_thread(
                self.driver(rec).is_running):
            return
        async with self.lock:
            rec = self.view(await self.start(rec))
        if rec["status"] != "Created":
            raise CorralError(f"Network {rec['name']!r} cannot be started: "
                              f"{rec['status_reason']}", 503)

    @staticmethod
    def url(name: str) -> str:
        return url("networks", name)

    # -- in a cluster (network_members, overlay) -------------------------------------------
    async def create_in_cluster(self, body: dict[str, Any], target: str | None
                                ) -> dict[str, Any]:
        """``--target M``: M's own keys, Pending; without: every member builds its own
        bridge (this one first: it resolves ``auto`` once for all of them)."""
        name = body.get("name")
        if not name:
            raise BadRequest("No network name provided")
        validate_network_name(name)
        type_ = body.get("type") or "bridge"
        config = string_map("config", body.get("config"))
        found = await self.store.get(key(name))
        if found is not None and (not network_members.clustered(found[0])
                                  or found[0].get("status") == "Created"):
            raise Conflict(f"Network {name!r} already exists")
        if found is not None and found[0]["type"] != type_:
            raise BadRequest(f"Network {name!r} is defined with type {found[0]['type']!r}")
        if target is not None:
            await network_members.check_member(self.bus, target)
            entry = network_members.member_entry(config)
            if found is None:
                rec = {"name": name, "type": type_, "description": description(
                    body.get("description")), "config": {}, "project": "default",
                    "status": "Pending", "members": {target: entry}}
                await self.store.create(key(name), rec, f"Network {name!r}")
                return rec
            rec, rev = found
            rec = {**rec, "members": {**rec["members"], target: entry}}
            await self.store.update(key(name), rec, rev)
            return rec
        network_members.check_global(config)
        rec = found[0] if found else {
            "name": name, "type": type_, "description": description(body.get("description")),
            "config": {}, "project": "default", "status": "Pending", "members": {}}
        if not rec["config"]:  # resolve auto addresses once, here, for every member
            drv = load(name, type_, config, self.corral_dir)  # 400 for an unknown type
            drv.validate_config(config)
            self.check(config)
            if type_ == "bridge":
                # defaults filled first (``ipv4.address`` left out is ``auto``): else each
                # member would pick a subnet of its own and no member got a DHCP slice
                from .drivers.bridge_config import resolve_auto, validate
                config = await asyncio.to_thread(resolve_auto, validate(config),
                                                 self.taken(name))
            rec = {**rec, "config": config}
        if found is None:
            await self.store.create(key(name), rec, f"Network {name!r}")
        else:
            await self.store.put(key(name), rec)
        entries = await network_members.realise_everywhere(self.bus, rec, self.member_create)
        ok = all(e["status"] == "Created" for e in entries.values())
        rec = {**rec, "members": entries, "status": "Created" if ok else "Errored"}
        await self.store.put(key(name), rec)
        network_members.outcome(name, entries)
        return rec

    async def member_create(self, body: dict[str, Any]) -> None:
        """Build this member's own bridge, NAT, dnsmasq (its DHCP slice) and overlay port."""
        rec = {"name": body["name"], "type": body["type"], "config": body["config"]}
        drv = load(rec["name"], rec["type"], rec["config"], self.corral_dir)
        async with self.lock:
            if await asyncio.to_thread(drv.exists):
                await asyncio.to_thread(drv.start)
            else:
                await asyncio.to_thread(drv.create, self.taken(rec["name"]))
            if self.up is not None:
                await self.up(rec)
            await self._overlay(rec)
            faults.point(f"network:member_made:{self.node}")

    async def update_in_cluster(self, rec: dict[str, Any], rev: int, body: dict[str, Any],
                                expected: str | None, patch: bool, target: str | None
                                ) -> dict[str, Any]:
        """As LXD: without ``--target`` the cluster-wide keys change and every member
        rebuilds its own bridge with them (this one first: if it cannot, nothing
        changes; ``auto`` resolved here, once); with ``--target M`` only M's own keys
        (``bridge.external_interfaces``) and only M. The record keeps the change even if
        some member failed (named in the error): it builds with it at its next start."""
        check_etag(expected, network_etag(rec))
        name = rec["name"]
        new = dict(rec)
        if "description" in body or not patch:
            new["description"] = description(body.get("description"))
        if target is not None:
            await network_members.check_member(self.bus, target)
        if "config" not in body and patch:
            await self.store.update(key(name), new, rev)
            return new
        given = string_map("config", body.get("config"))
        current, wanted = network_members.update_keys(rec, given, patch, target)
        if wanted == current:
            await self.store.update(key(name), new, rev)
            return new
        self.check(wanted)
        if target is not None:
            await network_members.apply_member(self.bus, target, {
                "name": name, "type": rec["type"], "current": current, "config": wanted},
                self.member_update)
            own = {k: v for k, v in wanted.items() if rec["config"].get(k) != v}
            new["members"] = {**rec["members"], target: {**rec["members"][target],
                                                        "config": own}}
            await self.store.update(key(name), new, rev)
            return new
        load(name, rec["type"], wanted, self.corral_dir).validate_config(wanted)
        if rec["type"] == "bridge":
            from .drivers.bridge_config import resolve_auto
            wanted = await asyncio.to_thread(resolve_auto, wanted, self.taken(name), name)
        new["config"] = wanted
        new["members"] = network_members.new_entries(rec, wanted)

        def body_of(member: str) -> dict[str, Any]:
            return {"name": name, "type": rec["type"],
                    "current": network_members.local_view(rec, member)["config"],
                    "config": network_members.local_view(new, member)["config"]}

        todo = [m for m, e in rec["members"].items() if e.get("status") == "Created"]
        if self.node in todo:  # here first: a change this member refuses changes nothing
            await self.member_update(body_of(self.node))
            todo.remove(self.node)
        await self.store.put(key(name), new)

        async def one(member: str) -> None:
            await network_members.apply_member(self.bus, member, body_of(member),
                                               self.member_update)
        await member_config.apply_everywhere(self.bus, "network", name, todo, one)
        return new

    async def member_update(self, body: dict[str, Any]) -> None:
        """Rebuild this member's own bridge, NAT and dnsmasq with a new config
        (``network_member_update``), then its ACL/forward tables and overlay port."""
        name = body["name"]
        drv = load(name, body["type"], body["current"], self.corral_dir)
        async with self.lock:
            made = await asyncio.to_thread(drv.update, body["config"],
                                           self.taken(exclude=name))
            rec = {"name": name, "type": body["type"], "config": made}
            if self.up is not None:
                await self.up(rec)
            await self._overlay(rec)

    async def member_delete(self, body: dict[str, Any]) -> None:
        drv = load(body["name"], body["type"], body["config"], self.corral_dir)
        async with self.lock:
            await asyncio.to_thread(overlay.detach, body["name"])
            if self.gone is not None:
                await self.gone(body["name"])
            await asyncio.to_thread(drv.delete)

    async def _peers(self) -> list[str]:
        """The other members' cluster addresses (removed members are not members)."""
        from shared import cluster
        return sorted({p for m in await cluster.read_members(self.bus) if m.name != self.node
                       and (p := overlay.peer_address(m.url))})

    async def follow_peers(self, every: float = overlay.FOLLOW_EVERY) -> None:
        """In a cluster, for ever: when a member joins or is removed (the set of peer
        addresses in the ``members`` bucket changes), bring every Created bridge's VXLAN
        flood list in step at once, without restarting any network. Why polling: every
        member's heartbeat rewrites the bucket every few seconds anyway, so a watch
        would wake as often; reading it is one cached KV listing."""
        seen: list[str] | None = None
        while True:
            await asyncio.sleep(every)
            try:
                peers = await self._peers()
                if peers == seen:  # the first round always: a member may have joined
                    # between the networks' start and now
                    continue
                async with self.lock:
                    for rec in self.records():
                        if self.view(rec).get("status") == "Created" \
                                and await asyncio.to_thread(self.driver(rec).exists):
                            await self._overlay(rec, peers)
                log.info("overlay peers in step", peers=peers)
                seen = peers
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus away a moment: try again next round
                log.warning("overlay peers not refreshed", error=str(exc))

    async def _overlay(self, rec: dict[str, Any], peers: list[str] | None = None) -> None:
        """In a cluster, a bridge's VXLAN port to the other members (overlay.py)."""
        if not self.node or rec.get("type") != "bridge" or self.bus is None:
            return
        local = overlay.local_address()
        if local is None:
            log.warning("no overlay: CORRAL_CLUSTER_ADDRESS is not an IP address",
                        network=rec["name"])
            return
        if peers is None:
            peers = await self._peers()
        gw = gateway(self.view(rec)["config"])
        await asyncio.to_thread(overlay.attach, rec["name"], rec["name"], local, peers,
                                str(gw.ip) if gw is not None else None)

    async def _member_status(self, rec: dict[str, Any], status: str, reason: str
                             ) -> dict[str, Any]:
        found = await self.store.get(key(rec["name"]))
        if found is None:
            return rec
        cur, rev = found
        mine = cur["members"].get(self.node) or {}
        if (mine.get("status"), mine.get("reason", "")) == (status, reason):
            return cur
        entry = {**mine, "status": status, "reason": reason}
        cur = {**cur, "members": {**cur["members"], self.node: entry}}
        try:
            await self.store.update(key(rec["name"]), cur, rev)
        except CorralError:
            pass  # another member wrote meanwhile: its status stays, ours is logged
        return cur

    async def join(self, rec: dict[str, Any]) -> None:
        """A member that joined after the network was created: its entry with a free DHCP
        slice, written compare-and-set; ``reconcile`` then builds it like any other."""
        name = rec["name"]
        for _ in range(10):
            found = await self.store.get(key(name))
            if found is None or self.node in found[0].get("members", {}):
                return
            cur, rev = found
            index = network_members.free_slice(cur)
            own = network_members.dhcp_slice(cur["config"], index, max(
                len(cur["members"]) + 1, network_members.SLICES))
            entry = {"status": "Created", "config": own, "slice": index}
            try:
                await self.store.update(key(name), {
                    **cur, "members": {**cur["members"], self.node: entry}}, rev)
                log.info("network joined by this member", network=name, slice=index)
                return
            except Conflict:
                continue
