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
from shared.messages.network import NicConfigReply, NicConfigRequest, NicLimitsRequest

from . import host, nic
from .drivers import validate_network_name
from .networks import Networks

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
    dev = nic.validate_nic_device(device)  # 400 for a bad device
    if "network" in device:
        rec = networks.find(device["network"])
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
    return nic.neutral_nic(req.index, device, host_name, hwaddr, network)


async def nic_limits(req: NicLimitsRequest) -> None:
    """Shape the host veth as the device's limits say; no limits: clear them."""
    _check_ifname("host_name", req.host_name)
    ingress, egress = nic.limits_of(req.device)
    if ingress or egress:
        await asyncio.to_thread(nic.apply_limits, req.host_name, ingress, egress)
    else:
        await asyncio.to_thread(nic.clear_limits, req.host_name)
