"""NIC verbs for the instance service: a NIC's neutral description, live bandwidth limits.

The instance service owns devices and their ``volatile.*`` keys; this side knows which
bridges exist and keeps them running. ``nic_config`` therefore resolves the device,
starts its network if needed, fills in a MAC and a host veth name when the caller has
none yet (it stores what we return), and answers with a neutral ``Nic`` that each
instance driver renders in its own syntax.
"""

from __future__ import annotations

import asyncio
import re

from shared.errors import BadRequest, NotFound
from shared.messages.network import (
    NicConfigReply,
    NicConfigRequest,
    NicLeaseRequest,
    NicLimitsRequest,
)

from . import host, leases, nic, nic_acls, routed
from .acls import acl_names
from .drivers import validate_network_name
from .networks import Networks

# One static-lease change at a time per network: the uniqueness check and the write of
# the host entry must not interleave with another NIC's.
_LEASE_LOCKS: dict[str, asyncio.Lock] = {}

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)


def _check_ifname(what: str, name: str) -> None:
    try:
        validate_network_name(name)
    except BadRequest as exc:
        raise BadRequest(f"Invalid NIC {what} {name!r}: " + exc.message.split(": ", 1)[-1]
                         ) from None


async def _parent(networks: Networks, parent: str, nictype: str) -> str:
    """Start the managed network named ``parent`` or check the host interface exists;
    returns the managed network's name ("" for a plain host interface)."""
    rec = networks.find(parent)
    if rec is not None:
        await networks.ensure_started(rec)
        return parent
    kind = await asyncio.to_thread(host.interface_type, parent)
    if kind is None:
        raise NotFound(f"NIC parent {parent!r} does not exist on this host (no managed "
                       "network or interface of that name)")
    if nictype == "bridged" and kind != "bridge":
        raise BadRequest(f"NIC parent {parent!r} is a {kind} interface, not a bridge; use "
                         "nictype=macvlan or a bridge")
    return ""


async def nic_config(networks: Networks, req: NicConfigRequest) -> NicConfigReply:
    device = dict(req.device)
    rec = networks.find(device["network"]) if device.get("network") else None
    if rec is not None and rec["type"] == "macvlan":
        # A NIC on a managed macvlan network is a macvlan NIC on the network's parent.
        device = {k: v for k, v in device.items() if k != "network"}
        device.update(nictype="macvlan", parent=rec["config"]["parent"])
        if rec["config"].get("mtu") and "mtu" not in device:
            device["mtu"] = rec["config"]["mtu"]
    dev = nic.validate_nic_device(device)  # 400 for a bad device
    if rec is not None and rec["type"] == "macvlan":
        await networks.ensure_started(rec)
        network = rec["name"]
    elif "network" in device:
        if rec is None:
            raise NotFound(f"Network {device['network']!r} not found (NIC of instance "
                           f"{req.instance!r})")
        await networks.ensure_started(rec)
        network = rec["name"]
    elif dev["nictype"] in ("bridged", "macvlan"):
        network = await _parent(networks, dev["parent"], dev["nictype"])
    else:
        network = ""
    host_name = ""
    if dev["nictype"] != "macvlan":
        host_name = dev.get("host_name") or req.host_name or nic.host_veth_name()
        _check_ifname("host_name", host_name)
    hwaddr = dev.get("hwaddr") or req.hwaddr or nic.random_hwaddr()
    if not _MAC.match(hwaddr):
        raise BadRequest(f"Invalid NIC MAC address {hwaddr!r} (like 00:16:3e:12:34:56)")
    out = nic.neutral_nic(req.index, device, host_name, hwaddr, network)
    if network and dev["nictype"] == "bridged" and \
            (networks.find(network) or {}).get("type") == "bridge":
        # The NIC's static lease follows its device: set, changed, or gone.
        static = await lease_set(networks, NicLeaseRequest(
            project=req.project, network=network, hwaddr=out.hwaddr, instance=req.instance,
            ipv4_address=dev.get("ipv4.address", ""),
            ipv6_address=dev.get("ipv6.address", "")), drop_dynamic=False)
        await _nic_acls(networks, network, req, dev, out.hwaddr, static)
    if dev["nictype"] == "routed":
        await asyncio.to_thread(routed.prepare, out, networks.corral_dir)
    return out


async def _nic_acls(networks: Networks, network: str, req: NicConfigRequest,
                    dev: dict[str, str], hwaddr: str, static: dict[str, str]) -> None:
    """Record the NIC's own ``security.acls`` (or that it has none) and rebuild the
    network's ACL table when that changed."""
    names = acl_names(dev.get("security.acls", ""))
    networks.acl_check(names, f"NIC 'security.acls' of instance {req.instance!r}")
    entry = None
    if names:
        entry = {"hwaddr": hwaddr.lower(), "acls": names, "instance": req.instance,
                 "project": req.project,
                 "addresses": [a for a in static.values() if a],
                 "config": {k: v for k, v in dev.items()
                            if k.startswith("security.acls.default.")}}
    rec = networks.find(network)
    if rec is None:
        return
    state_dir = networks.driver(rec).state_dir
    if await asyncio.to_thread(nic_acls.write, state_dir, entry, hwaddr) and networks.up:
        await networks.up(rec)


async def lease_set(networks: Networks, req: NicLeaseRequest,
                    drop_dynamic: bool = True) -> dict[str, str]:
    """Make the static lease of ``req.hwaddr`` on ``req.network`` say what ``req`` says
    (both addresses empty: none). ``drop_dynamic``: a running guest's dynamic lease of
    another address is forgotten, so its next DHCP request is answered with the new one."""
    rec = networks.find(req.network)
    if rec is None:
        raise NotFound(f"Network {req.network!r} not found")
    if rec["type"] != "bridge":
        raise BadRequest(f"Network {req.network!r} is a {rec['type']} network: static "
                         "DHCP leases are for bridge networks")
    ipv4, ipv6 = leases.check_addresses(req.network, rec["config"], req.ipv4_address,
                                        req.ipv6_address)
    drv = networks.driver(rec)
    lock = _LEASE_LOCKS.setdefault(req.network, asyncio.Lock())
    async with lock:
        # Another guest's dynamic lease of the address: 409 while in use, else released.
        holders = await asyncio.to_thread(leases.dynamic_holders, drv.state_dir, drv.name,
                                          req.hwaddr, ipv4, ipv6)
        changed = await asyncio.to_thread(leases.write, drv.state_dir, req.hwaddr,
                                          req.instance, ipv4, ipv6,
                                          f"{req.project}/{req.instance}")
        if holders:
            await asyncio.to_thread(drv.release_leases, holders)
        if changed and drop_dynamic and (ipv4 or ipv6):
            stale = [lease for lease in drv.leases()
                     if lease["hwaddr"] == req.hwaddr.lower()
                     and lease["address"] not in (ipv4, ipv6)]
            if stale:
                await asyncio.to_thread(drv.release_leases, {req.hwaddr.lower()})
    return {"ipv4.address": ipv4, "ipv6.address": ipv6}


async def lease_clear(networks: Networks, req: NicLeaseRequest) -> None:
    """Forget the static lease of ``req.hwaddr`` (a NIC lost its address or went)."""
    rec = networks.find(req.network)
    if rec is None:
        return
    drv = networks.driver(rec)
    lock = _LEASE_LOCKS.setdefault(req.network, asyncio.Lock())
    async with lock:
        await asyncio.to_thread(leases.remove, drv.state_dir, {req.hwaddr})


async def nic_limits(req: NicLimitsRequest) -> None:
    """Shape the host veth as the device's limits say; no limits: clear them."""
    _check_ifname("host_name", req.host_name)
    ingress, egress = nic.limits_of(req.device)
    if ingress or egress:
        await asyncio.to_thread(nic.apply_limits, req.host_name, ingress, egress)
    else:
        await asyncio.to_thread(nic.clear_limits, req.host_name)
