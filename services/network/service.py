"""The network service: managed networks (bridges, DHCP/DNS, NAT) on this node.

Thin: endpoints decode, call ``networks``/``attach``/``usage``, publish lifecycle events.
"""

from __future__ import annotations

import asyncio

from shared import faults
from shared.api import listing, url
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages.network import (
    ForwardRequest,
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

from . import acls as acl_mod
from . import (
    attach,
    firewall,
    forwards,
    host,
    leases,
    network_members,
    nic,
    nic_acls,
    routed,
    usage,
)
from .acls import Acls
from .forwards import Forwards
from .networks import Networks, network_etag, public, unmanaged

# The stock client checks these before `lxc network ...` (client/lxd_networks.go).
API_EXTENSIONS = ["network", "network_leases", "network_state", "network_state_bond_bridge",
                  "network_acl", "network_forward"]


class NetworkService(Service):
    name = "network"
    description = "Corral networks: bridges, DHCP and DNS, NAT, NIC limits"

    async def setup(self) -> None:
        store = await Store(self.bus, "networks", cache=True).open()
        self.networks = Networks(store, self.config.dir,
                                 self.config.node if self.config.cluster else None, self.bus)
        self.acls = Acls(await Store(self.bus, "network_acls", cache=True).open())
        self.forwards = Forwards(await Store(self.bus, "network_forwards", cache=True).open())
        self.networks.check = lambda config: self.acls.check_names(
            acl_mod.acl_names(config.get("security.acls", "")), "network config")
        self.networks.up = self._firewall_up
        self.networks.gone = self._firewall_gone
        self.networks.acl_check = self.acls.check_names
        self._release_locks: dict[str, asyncio.Lock] = {}
        self._fw_lock = asyncio.Lock()
        await self.networks.reconcile()
        self._follow: asyncio.Task | None = None
        if self.config.cluster:  # overlay peers follow members joining and leaving
            self._follow = asyncio.create_task(self.networks.follow_peers())

    async def teardown(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)

    async def _firewall_up(self, rec: dict) -> None:
        """Rebuild network ``rec``'s ACL and forward tables from the records."""
        await asyncio.to_thread(firewall.apply_acls, rec, self.acls.records(),
                                self._nic_acls(rec))
        await asyncio.to_thread(firewall.apply_forwards, rec, self.forwards.records())

    def _nic_acls(self, rec: dict) -> list[dict]:
        if rec.get("type") != "bridge":
            return []
        return nic_acls.read_all(self.networks.driver(rec).state_dir)

    async def _firewall_gone(self, name: str) -> None:
        await asyncio.to_thread(firewall.remove, name)
        for fwd in self.forwards.records(name):
            await self.forwards.delete(name, fwd["listen_address"])

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
        items = [(n, self._public(managed[n], users[n]) if n in managed
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
        return Reply(metadata=self._public(rec, users[req.name], req.target),
                     etag=network_etag(rec))

    def _public(self, rec: dict, users: list[str], target: str | None = None) -> dict:
        """LXD's network object; in a cluster with ``locations`` (network_members)."""
        out = public(rec, users)
        if self.networks.node:
            out.update(network_members.public_fields(rec, target))
        return out

    @endpoint("create", CreateRequest)
    async def create_network(self, req: CreateRequest) -> Reply:
        rec = await self.networks.create(req.body, req.target)
        await self._lifecycle("network-created", rec["name"], req)
        return Reply(metadata={})

    async def _update(self, req: ObjectRequest, patch: bool) -> Reply:
        await self.networks.update(req.name, req.body or {}, req.etag, patch, req.target)
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
        if self.forwards.records(req.name):  # their URLs and records name the network
            raise Conflict(f"Network {req.name!r} has forwards; delete them before "
                           "renaming it")
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

    @endpoint("network_member_create", CreateRequest, scope="node")
    async def network_member_create(self, req: CreateRequest) -> Reply:
        """In a cluster: build this member's own network (network_members)."""
        await self.networks.member_create(req.body)
        return Reply(metadata={})

    @endpoint("network_member_update", CreateRequest, scope="node")
    async def network_member_update(self, req: CreateRequest) -> Reply:
        """In a cluster: rebuild this member's own network with a new config."""
        await self.networks.member_update(req.body)
        return Reply(metadata={})

    @endpoint("network_member_delete", CreateRequest, scope="node")
    async def network_member_delete(self, req: CreateRequest) -> Reply:
        """In a cluster: remove this member's own network (network_members)."""
        await self.networks.member_delete(req.body)
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

    # -- LXD's /1.0/network-acls ---------------------------------------------------------
    def _acl_users(self, name: str) -> list[str]:
        """Networks naming the ACL, then instances whose NICs name it."""
        nets = [self.networks.url(r["name"]) for r in self.networks.records()
                if name in acl_mod.acl_names(r["config"].get("security.acls", ""))]
        insts = sorted({url("instances", n["instance"], n.get("project", "default"))
                        for r in self.networks.records() for n in self._nic_acls(r)
                        if name in n.get("acls", [])})
        return nets + insts

    async def _acl_lifecycle(self, action: str, name: str, req, context=None) -> None:
        await self.events.lifecycle(action, acl_mod.acl_url(name), context=context,
                                    requestor=req.requestor)

    async def _reapply_acl_users(self, name: str) -> None:
        for rec in self.networks.records():
            if name in acl_mod.acl_names(rec["config"].get("security.acls", "")) or any(
                    name in n.get("acls", []) for n in self._nic_acls(rec)):
                await asyncio.to_thread(firewall.apply_acls, rec, self.acls.records(),
                                        self._nic_acls(rec))

    @endpoint("acl_list", ListRequest)
    async def acl_list(self, req: ListRequest) -> Reply:
        items = [(r["name"], acl_mod.public(r, self._acl_users(r["name"])))
                 for r in self.acls.records()]
        return Reply(metadata=listing("network-acls", items, req.recursion))

    @endpoint("acl_get", ObjectRequest)
    async def acl_get(self, req: ObjectRequest) -> Reply:
        rec, _ = await self.acls.get(req.name)
        return Reply(metadata=acl_mod.public(rec, self._acl_users(req.name)),
                     etag=acl_mod.acl_etag(rec))

    @endpoint("acl_create", CreateRequest)
    async def acl_create(self, req: CreateRequest) -> Reply:
        rec = await self.acls.create(req.body)
        await self._acl_lifecycle("network-acl-created", rec["name"], req)
        return Reply(metadata={})

    async def _acl_update(self, req: ObjectRequest, patch: bool) -> Reply:
        async with self._fw_lock:
            old, _new = await self.acls.update(req.name, req.body or {}, req.etag, patch)
            faults.point("network:acl_stored")
            try:
                await self._reapply_acl_users(req.name)
            except BaseException:
                await self.acls.restore(old)
                await self._reapply_acl_users(req.name)
                raise
        await self._acl_lifecycle("network-acl-updated", req.name, req)
        return Reply(metadata={})

    @endpoint("acl_update", ObjectRequest)
    async def acl_update(self, req: ObjectRequest) -> Reply:
        return await self._acl_update(req, patch=False)

    @endpoint("acl_patch", ObjectRequest)
    async def acl_patch(self, req: ObjectRequest) -> Reply:
        return await self._acl_update(req, patch=True)

    @endpoint("acl_rename", ObjectRequest)
    async def acl_rename(self, req: ObjectRequest) -> Reply:
        new = await self.acls.rename(req.name, (req.body or {}).get("name"),
                                     self._acl_users(req.name))
        await self._acl_lifecycle("network-acl-renamed", new["name"], req,
                                  context={"old_name": req.name})
        return Reply(metadata={})

    @endpoint("acl_delete", ObjectRequest)
    async def acl_delete(self, req: ObjectRequest) -> Reply:
        await self.acls.delete(req.name, self._acl_users(req.name))
        await self._acl_lifecycle("network-acl-deleted", req.name, req)
        return Reply(metadata={})

    # -- LXD's /1.0/networks/<n>/forwards ------------------------------------------------
    def _bridge(self, network: str) -> dict:
        rec = self.networks.find(network)
        if rec is None:
            raise NotFound(f"Network {network!r} not found")
        if rec["type"] != "bridge":
            raise BadRequest(f"Network {network!r} is a {rec['type']} network: forwards "
                             "are for bridge networks")
        return rec

    async def _fwd_lifecycle(self, action: str, req: ForwardRequest, address: str) -> None:
        await self.events.lifecycle(action, forwards.forward_url(req.network, address),
                                    requestor=req.requestor)

    @endpoint("forward_list", ForwardRequest)
    async def forward_list(self, req: ForwardRequest) -> Reply:
        self._bridge(req.network)
        recs = self.forwards.records(req.network)
        if req.recursion <= 0:
            return Reply(metadata=[forwards.forward_url(req.network, r["listen_address"])
                                   for r in recs])
        return Reply(metadata=[forwards.public(r) for r in recs])

    @endpoint("forward_get", ForwardRequest)
    async def forward_get(self, req: ForwardRequest) -> Reply:
        self._bridge(req.network)
        rec, _ = await self.forwards.get(req.network, req.listen_address)
        return Reply(metadata=forwards.public(rec), etag=forwards.forward_etag(rec))

    @endpoint("forward_create", ForwardRequest)
    async def forward_create(self, req: ForwardRequest) -> Reply:
        net = self._bridge(req.network)
        async with self._fw_lock:
            rec = await self.forwards.create(req.network, net["config"], req.body or {})
            faults.point("network:forward_stored")  # the record is the truth: start rebuilds
            try:
                await asyncio.to_thread(firewall.apply_forwards, net, self.forwards.records())
            except BaseException:
                await self.forwards.delete(req.network, rec["listen_address"])
                raise
        await self._fwd_lifecycle("network-forward-created", req, rec["listen_address"])
        return Reply(metadata={})

    async def _forward_update(self, req: ForwardRequest, patch: bool) -> Reply:
        net = self._bridge(req.network)
        async with self._fw_lock:
            old, _new = await self.forwards.update(req.network, net["config"],
                                                   req.listen_address, req.body or {},
                                                   req.etag, patch)
            try:
                await asyncio.to_thread(firewall.apply_forwards, net, self.forwards.records())
            except BaseException:
                await self.forwards.put_back(old)
                raise
        await self._fwd_lifecycle("network-forward-updated", req, req.listen_address)
        return Reply(metadata={})

    @endpoint("forward_update", ForwardRequest)
    async def forward_update(self, req: ForwardRequest) -> Reply:
        return await self._forward_update(req, patch=False)

    @endpoint("forward_patch", ForwardRequest)
    async def forward_patch(self, req: ForwardRequest) -> Reply:
        return await self._forward_update(req, patch=True)

    @endpoint("forward_delete", ForwardRequest)
    async def forward_delete(self, req: ForwardRequest) -> Reply:
        net = self._bridge(req.network)
        async with self._fw_lock:
            old = await self.forwards.delete(req.network, req.listen_address)
            try:
                await asyncio.to_thread(firewall.apply_forwards, net, self.forwards.records())
            except BaseException:
                await self.forwards.put_back(old)
                raise
        await self._fwd_lifecycle("network-forward-deleted", req, req.listen_address)
        return Reply(metadata={})

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
        await asyncio.to_thread(routed.release_recorded, self.networks.corral_dir,
                                set(req.hwaddrs))
        rec = self.networks.find(req.network)
        if rec is None or not req.hwaddrs:
            return Reply(metadata={"released": 0})
        lock = self._release_locks.setdefault(req.network, asyncio.Lock())
        async with lock:
            state_dir = self.networks.driver(rec).state_dir
            await asyncio.to_thread(leases.remove, state_dir, set(req.hwaddrs))
            if await asyncio.to_thread(nic_acls.remove, state_dir, set(req.hwaddrs)):
                await self._firewall_up(rec)
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
