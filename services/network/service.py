"""The network service: managed networks (bridges, DHCP/DNS, NAT) on this node.

Thin: endpoints decode, call ``networks``/``attach``/``usage``, publish lifecycle events.
"""

from __future__ import annotations

import asyncio

from shared import faults
from shared.api import listing
from shared.errors import BadRequest
from shared.messages.network import (
    NicConfigRequest,
    NicLeaseRequest,
    NicLimitsRequest,
    NicReleaseRequest,
)
from shared.models import (
    CreateRequest,
    ListRequest,
    ObjectRequest,
    Reply,
    ServerInfoReply,
)
from shared.service import Service, endpoint, main_for
from shared.state import Store

from . import attach, host, leases, nic, usage
from .networks import Networks, network_etag, public, unmanaged

# The stock client checks these before `lxc network ...` (client/lxd_networks.go).
API_EXTENSIONS = ["network", "network_leases", "network_state", "network_state_bond_bridge"]


class NetworkService(Service):
    name = "network"
    description = "Corral networks: bridges, DHCP and DNS, NAT, NIC limits"

    async def setup(self) -> None:
        store = await Store(self.bus, "networks", cache=True).open()
        self.networks = Networks(store, self.config.dir)
        self._release_locks: dict[str, asyncio.Lock] = {}
        await self.networks.reconcile()

    def server_info(self) -> ServerInfoReply:
        return ServerInfoReply(api_extensions=API_EXTENSIONS)


    async def _lifecycle(self, action: str, name: str, req: ObjectRequest | CreateRequest,
                         context: dict | None = None) -> None:
        await self.events.lifecycle(action, self.networks.url(name), context=context,
                                    requestor=req.requestor)

    # -- LXD's /1.0/networks ------------------------------------------------------------
    @endpoint("list", ListRequest)
    async def list_networks(self, req: ListRequest) -> Reply:
        managed = {r["name"]: r for r in self.networks.records()}
        others = {n: t for n, t in (await asyncio.to_thread(host.interfaces)).items()
                  if n not in managed}
        names = sorted([*managed, *others])
        if req.recursion <= 0:
            return Reply(metadata=listing("networks", [(n, {}) for n in names], 0))
        users = await usage.used_by(self.bus, req.project, names, set(managed))
        items = [(n, public(managed[n], users[n]) if n in managed
                  else unmanaged(n, others[n], users[n])) for n in names]
        return Reply(metadata=listing("networks", items, req.recursion))

    @endpoint("get", ObjectRequest)
    async def get_network(self, req: ObjectRequest) -> Reply:
        rec = self.networks.find(req.name)
        if rec is None:
            kind = await asyncio.to_thread(host.interface_type, req.name)
            if kind is None or req.name.startswith("veth"):
                await self.networks.get(req.name)  # raises the 404
            users = await usage.used_by(self.bus, req.project, [req.name], set())
            return Reply(metadata=unmanaged(req.name, kind, users[req.name]))
        users = await usage.used_by(self.bus, req.project, [req.name], {req.name})
        return Reply(metadata=public(rec, users[req.name]), etag=network_etag(rec))

    @endpoint("create", CreateRequest)
    async def create_network(self, req: CreateRequest) -> Reply:
        rec = await self.networks.create(req.body)
        await self._lifecycle("network-created", rec["name"], req)
        return Reply(metadata={})

    async def _update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.networks.update(req.name, req.body or {}, req.etag, patch)
        await self._lifecycle("network-updated", req.name, req)
        return Reply(metadata={})

    @endpoint("update", ObjectRequest)
    async def update_network(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=False)

    @endpoint("patch", ObjectRequest)
    async def patch_network(self, req: ObjectRequest) -> Reply:
        return await self._update(req, patch=True)

    @endpoint("rename", ObjectRequest)
    async def rename_network(self, req: ObjectRequest) -> Reply:
        await self.networks.get(req.name)
        users = await usage.used_by(self.bus, req.project, [req.name], {req.name}, strict=True)
        new = await self.networks.rename(req.name, (req.body or {}).get("name"),
                                         users[req.name])
        await self._lifecycle("network-renamed", new["name"], req,
                              context={"old_name": req.name})
        return Reply(metadata={})

    @endpoint("delete", ObjectRequest)
    async def delete_network(self, req: ObjectRequest) -> Reply:
        await self.networks.get(req.name)
        users = await usage.used_by(self.bus, req.project, [req.name], {req.name}, strict=True)
        await self.networks.delete(req.name, users[req.name])
        await self._lifecycle("network-deleted", req.name, req)
        return Reply(metadata={})

    @endpoint("state", ObjectRequest)
    async def network_state(self, req: ObjectRequest) -> Reply:
        rec = self.networks.find(req.name)
        if rec is not None:
            return Reply(metadata=await asyncio.to_thread(self.networks.driver(rec).state))
        if req.name.startswith("veth"):
            await self.networks.get(req.name)  # 404 like LXD
        return Reply(metadata=await asyncio.to_thread(host.interface_state, req.name))

    @endpoint("leases", ObjectRequest)
    async def network_leases(self, req: ObjectRequest) -> Reply:
        rec = self.networks.find(req.name)
        if rec is None:
            if await asyncio.to_thread(host.interface_type, req.name) is None:
                await self.networks.get(req.name)  # 404
            raise BadRequest(f"Network {req.name!r} is not managed by Corral: it has no "
                             "DHCP leases")
        leases = await asyncio.to_thread(self.networks.driver(rec).leases)
        return Reply(metadata=leases)

    # -- NICs, for the instance service on this node ----------------------------------
    @endpoint("nic_config", NicConfigRequest, scope="node")
    async def nic_config(self, req: NicConfigRequest) -> Reply:
        faults.point("network:nic_config")
        reply = await attach.nic_config(self.networks, req)
        return Reply(metadata=reply.model_dump())

    @endpoint("nic_release", NicReleaseRequest, scope="node")
    async def nic_release(self, req: NicReleaseRequest) -> Reply:
        """A deleted instance's leases go (one release at a time per network: each may
        restart its dnsmasq). An unmanaged or unknown network has none: nothing to do."""
        for host_name in req.host_names:  # the veth went with the instance; its ifb not
            await asyncio.to_thread(nic.clear_limits, host_name)
        rec = self.networks.find(req.network)
        if rec is None or not req.hwaddrs:
            return Reply(metadata={"released": 0})
        lock = self._release_locks.setdefault(req.network, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(leases.remove, self.networks.driver(rec).state_dir,
                                    set(req.hwaddrs))
            n = await asyncio.to_thread(self.networks.driver(rec).release_leases,
                                        set(req.hwaddrs))
        return Reply(metadata={"released": n})

    @endpoint("lease_set", NicLeaseRequest, scope="node")
    async def lease_set(self, req: NicLeaseRequest) -> Reply:
        """A running NIC's new ``ipv4.address``/``ipv6.address`` (static DHCP lease)."""
        return Reply(metadata=await attach.lease_set(self.networks, req))

    @endpoint("lease_clear", NicLeaseRequest, scope="node")
    async def lease_clear(self, req: NicLeaseRequest) -> Reply:
        await attach.lease_clear(self.networks, req)
        return Reply(metadata={})

    @endpoint("nic_limits", NicLimitsRequest, scope="node")
    async def nic_limits(self, req: NicLimitsRequest) -> Reply:
        await attach.nic_limits(req)
        return Reply(metadata={})


main = main_for(NetworkService)
