"""Networks in a cluster: defined per member, then made on every member (LXD's way).

``lxc network create n --target node2 bridge.external_interfaces=eth1`` records what is
particular to node2, Pending, and builds nothing. ``lxc network create n`` then makes the
network on the member that was asked (``auto`` addresses resolved there, once: every
member's bridge has the same subnet and gateway address, one L2 segment with the overlay)
and asks every other member (``corral.node.<m>.network.network_member_create``) to build
its own bridge, NAT and dnsmasq. Each answer lands in the record's ``members``: Created,
or Errored with the reason; the same create again retries the members that failed.

DHCP: each member's dnsmasq serves its own slice of the range (its own lease file), so
two members never hand out the same address on the shared segment without having to
share lease state (the range cut in ``SLICES`` or more, a slice per member in name
order, written in the member's config as ``ipv4.dhcp.ranges``; a member joining later
takes a free one at its start). A range set cluster-wide by the user is taken as given.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from shared import cluster, member_config
from shared.bus import Bus
from shared.errors import BadRequest, CorralError, NotFound
from shared.member_config import (  # noqa: F401 (this module's API, as the service uses it)
    CREATED,
    ERRORED,
    PENDING,
    check_member,
    clustered,
)
from shared.models import CreateRequest

MEMBER_KEYS = ("bridge.external_interfaces",)
# The DHCP range is cut in at least this many slices, so members that join later find
# free ones (a /24: 31 addresses a member); more members than this: one slice each.
SLICES = 8
MEMBER_TIMEOUT = 60.0


def local_view(rec: dict[str, Any], node: str) -> dict[str, Any]:
    """The network as member ``node`` builds it, with why it is not Created."""
    view = member_config.local_view(rec, node)
    if view is not rec:
        view["status_reason"] = (rec["members"].get(node) or {}).get("reason", "")
    return view


def public_fields(rec: dict[str, Any], target: str | None) -> dict[str, Any]:
    return member_config.public_fields(rec, target, "Network")


def member_entry(config: dict[str, str]) -> dict[str, Any]:
    return member_config.member_entry(config, MEMBER_KEYS)


def check_global(config: dict[str, str]) -> None:
    for k in MEMBER_KEYS:
        if k in config:
            raise BadRequest(f"Config key {k!r} is cluster member specific: give it per "
                             f"member first (lxc network create NAME {k}=... --target "
                             "MEMBER)")


def free_slice(rec: dict[str, Any]) -> int:
    """The first slice no member holds (for a member joining after the create)."""
    used = {e.get("slice") for e in rec["members"].values()}
    return next(i for i in range(len(used) + 1 + SLICES) if i not in used)


def dhcp_slice(config: dict[str, str], index: int, count: int) -> dict[str, str]:
    """Member ``index`` of ``count``'s part of the default DHCP range (LXD's default: the
    2nd to the last-but-one address), as ``ipv4.dhcp.ranges``; {} when the user set one."""
    addr = config.get("ipv4.address", "")
    if "ipv4.dhcp.ranges" in config or "/" not in addr or count < 2:
        return {}
    net = ipaddress.ip_interface(addr).network
    first, last = int(net.network_address) + 2, int(net.broadcast_address) - 1
    size = (last - first + 1) // count
    if size < 1:
        return {}
    lo = first + index * size
    hi = last if index == count - 1 else lo + size - 1
    return {"ipv4.dhcp.ranges": f"{ipaddress.IPv4Address(lo)}-{ipaddress.IPv4Address(hi)}"}


async def realise_everywhere(bus: Bus, rec: dict[str, Any], local: Any
                             ) -> dict[str, dict[str, Any]]:
    """Every member not yet Created builds its own network (``local`` for this one)."""
    members = await cluster.read_members(bus)
    online = {m.name for m in members if cluster.is_online(m)}
    names = sorted(m.name for m in members)
    entries = {n: dict(e) for n, e in rec["members"].items()}
    count = max(len(names), SLICES)

    async def one(name: str) -> None:
        entry = entries.get(name) or {"status": PENDING, "config": {}}
        if entry.get("status") == CREATED:
            return
        index = names.index(name)
        own = {**entry.get("config", {}), **dhcp_slice(rec["config"], index, count)}
        body = {"name": rec["name"], "type": rec["type"],
                "config": {**rec["config"], **own}}
        try:
            if name not in online:
                raise CorralError(f"member {name!r} is offline", 503)
            if name == bus.config.node:
                await local(body)
            else:
                await member_config.ask_member(bus, "network", "network_member_create",
                                               body, name, MEMBER_TIMEOUT)
            entries[name] = {"status": CREATED, "config": own, "slice": index}
        except CorralError as exc:
            # its slice is kept: a member that restarts builds an Errored network with it
            entries[name] = {"status": ERRORED, "config": own, "slice": index,
                             "reason": exc.message, "code": exc.code}

    await asyncio.gather(*(one(n) for n in names))
    return entries


async def forget_everywhere(bus: Bus, rec: dict[str, Any], local: Any) -> None:
    online = {m.name for m in await cluster.read_members(bus) if cluster.is_online(m)}
    failed = []
    for name, entry in sorted(rec["members"].items()):
        if entry.get("status") == PENDING:
            continue
        body = {"name": rec["name"], "type": rec["type"],
                "config": local_view(rec, name)["config"]}
        try:
            if name == bus.config.node:
                await local(body)
            elif name not in online:
                raise CorralError(f"member {name!r} is offline", 503)
            else:
                await bus.request("network", "network_member_delete",
                                  CreateRequest(body=body), node=name, timeout=MEMBER_TIMEOUT)
        except CorralError as exc:
            failed.append(f"{name}: {exc.message}")
    if failed:
        raise CorralError(f"Network {rec['name']!r} could not be deleted on every member "
                          f"({'; '.join(failed)}); try again once they are online", 503)


def update_keys(rec: dict[str, Any], given: dict[str, str], patch: bool,
                target: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """A PUT/PATCH of a clustered network's config: the scope's current config (the
    cluster-wide one, or with ``--target`` that member's view) and the one asked for;
    400 for a key that cannot change in that scope (LXD's rule). A member's DHCP slice
    is its own and kept as it is."""
    if target is not None and target not in rec["members"]:
        raise NotFound(f"Network {rec['name']!r} is not defined on member {target!r}")
    current = local_view(rec, target)["config"] if target else dict(rec["config"])
    wanted = {**current, **given} if patch else dict(given)
    if target is not None and "ipv4.dhcp.ranges" in current:
        wanted.setdefault("ipv4.dhcp.ranges", current["ipv4.dhcp.ranges"])
    member_config.split_update(wanted, current, MEMBER_KEYS, target, "network")
    return current, wanted


def new_entries(rec: dict[str, Any], config: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The members' entries under a new cluster-wide ``config``: a member's DHCP slice is
    cut again from a new subnet (same slice number)."""
    count = max(len(rec["members"]), SLICES)
    out = {}
    for name, entry in rec["members"].items():
        own = dict(entry.get("config", {}))
        if "slice" in entry and "ipv4.dhcp.ranges" not in config:
            own.pop("ipv4.dhcp.ranges", None)
            own.update(dhcp_slice(config, entry["slice"], count))
        out[name] = {**entry, "config": own}
    return out


async def apply_member(bus: Bus, node: str, body: dict[str, Any], local: Any) -> None:
    """Have member ``node`` rebuild its own bridge with a new config (``local`` here)."""
    if node == bus.config.node:
        await local(body)
    else:
        await member_config.ask_member(bus, "network", "network_member_update", body, node,
                                       MEMBER_TIMEOUT)


def outcome(name: str, entries: dict[str, dict[str, Any]]) -> None:
    member_config.outcome("network", name, entries)
