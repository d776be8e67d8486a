"""Network forwards (LXD's ``/1.0/networks/<n>/forwards``): DNAT from a listen address.

A forward is ``{network, listen_address, description, config, ports}`` in the
``network_forwards`` bucket; ``config.target_address`` (optional) takes whatever no port
entry names, each port entry ``{protocol, listen_port, target_address, target_port,
description}`` sends its listen ports to an instance address on the network. The rules
are one nftables table per network (``drivers.nft.apply_forward_table``), for packets
arriving from elsewhere and for the host's own connections.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_address
from typing import Any
from urllib.parse import quote

from shared.api import check_etag, description, etag, string_map, url
from shared.errors import BadRequest, Conflict, NotFound
from shared.state import Store, key

from .drivers.bridge_config import gateway, gateway6

PORT_FIELDS = ("description", "protocol", "listen_port", "target_port", "target_address")
_PORT = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_PORTS = 1024  # expanded one-to-one mappings in one entry


def forward_url(network: str, address: str) -> str:
    return f"{url('networks', network)}/forwards/{quote(address, safe='')}"


def forward_etag(rec: dict[str, Any]) -> str:
    return etag(rec["listen_address"], rec.get("description", ""), rec["config"],
                rec["ports"])


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """LXD's NetworkForward object."""
    return {"listen_address": rec["listen_address"], "location": "none",
            "description": rec.get("description", ""), "config": rec["config"],
            "ports": rec["ports"]}


def _ports(field: str, value: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in (value or "").split(",")):
        m = _PORT.match(part)
        low = int(m.group(1)) if m else 0
        high = int(m.group(2) or low) if m else 0
        if not m or not 1 <= low <= high <= 65535:
            raise BadRequest(f"Invalid {field} {part!r}: a port or range like 80 or "
                             "8000-8010 (1-65535)")
        out.append((low, high))
    return out


def _count(ranges: list[tuple[int, int]]) -> int:
    return sum(high - low + 1 for low, high in ranges)


def _inside(what: str, value: str, config: dict[str, str], network: str) -> str:
    try:
        addr = ip_address(value.strip())
    except ValueError:
        raise BadRequest(f"Invalid {what} {value!r}: not an IP address") from None
    gw = gateway(config) if isinstance(addr, IPv4Address) else gateway6(config)
    if gw is None or addr not in gw.network or addr == gw.ip:
        raise BadRequest(f"Invalid {what} {addr}: not an instance address inside the "
                         f"subnet of network {network!r}"
                         + (f" ({gw.network})" if gw is not None else ""))
    return str(addr)


def check_ports(ports: Any, config: dict[str, str], network: str, version: int
                ) -> list[dict[str, str]]:
    if ports is None:
        return []
    if not isinstance(ports, list):
        raise BadRequest("ports must be a list")
    out: list[dict[str, str]] = []
    used: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            raise BadRequest(f"Invalid port {i}: an object")
        unknown = sorted(set(port) - set(PORT_FIELDS))
        if unknown:
            raise BadRequest(f"Invalid port {i}: unknown fields {unknown}")
        p = {f: str(port.get(f) or "").strip() for f in PORT_FIELDS}
        if p["protocol"] not in ("tcp", "udp"):
            raise BadRequest(f"Invalid port {i}: protocol must be tcp or udp")
        listen = _ports("listen_port", p["listen_port"])
        for low, high in listen:
            taken = used[p["protocol"]] & set(range(low, high + 1))
            if taken:
                raise BadRequest(f"Invalid port {i}: {p['protocol']} listen port "
                                 f"{min(taken)} is already forwarded by another entry")
            used[p["protocol"]] |= set(range(low, high + 1))
        if not p["target_address"]:
            raise BadRequest(f"Invalid port {i}: target_address is required")
        p["target_address"] = _inside("target_address", p["target_address"], config,
                                      network)
        if ip_address(p["target_address"]).version != version:
            raise BadRequest(f"Invalid port {i}: target_address {p['target_address']} is "
                             "not of the listen address's IP family")
        if p["target_port"]:
            target = _ports("target_port", p["target_port"])
            n = _count(target)
            if n != 1 and n != _count(listen):
                raise BadRequest(f"Invalid port {i}: target_port must be one port or as "
                                 "many ports as listen_port")
            if _count(listen) > MAX_PORTS:
                raise BadRequest(f"Invalid port {i}: at most {MAX_PORTS} ports when "
                                 "target_port maps them one to one")
        out.append(p)
    return out


def check_config(cfg: Any, config: dict[str, str], network: str, version: int
                 ) -> dict[str, str]:
    out = string_map("config", cfg)
    for k in out:
        if k != "target_address" and not k.startswith("user."):
            raise BadRequest(f"Invalid config option {k!r} (target_address or user.*)")
    if out.get("target_address"):
        out["target_address"] = _inside("target_address", out["target_address"], config,
                                        network)
        if ip_address(out["target_address"]).version != version:
            raise BadRequest("config target_address is not of the listen address's "
                             "IP family")
    elif "target_address" in out:
        del out["target_address"]
    return out


def _expand(ranges: list[tuple[int, int]]) -> list[int]:
    return [n for low, high in ranges for n in range(low, high + 1)]


def dnat_statements(rec: dict[str, Any]) -> list[str]:
    """The forward's nft statements: each port entry, then the default target."""
    addr = ip_address(rec["listen_address"])
    ipv = "ip" if addr.version == 4 else "ip6"
    out = []

    def to(target: str, port: int | None = None) -> str:
        t = target if addr.version == 4 else f"[{target}]"
        return f"dnat {ipv} to {t}" + (f":{port}" if port is not None else "")

    for p in rec["ports"]:
        match = f"{ipv} daddr {addr} meta l4proto {p['protocol']} {p['protocol']} dport"
        listen = _ports("listen_port", p["listen_port"])
        spec = ", ".join(f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in listen)
        if not p.get("target_port"):
            out.append(f"{match} {{ {spec} }} {to(p['target_address'])}")
            continue
        targets = _expand(_ports("target_port", p["target_port"]))
        if len(targets) == 1:
            out.append(f"{match} {{ {spec} }} {to(p['target_address'], targets[0])}")
        else:
            out += [f"{match} {lp} {to(p['target_address'], tp)}"
                    for lp, tp in zip(_expand(listen), targets, strict=True)]
    if rec["config"].get("target_address"):
        out.append(f"{ipv} daddr {addr} {to(rec['config']['target_address'])}")
    return out


class Forwards:
    def __init__(self, store: Store) -> None:
        self.store = store

    def records(self, network: str | None = None) -> list[dict[str, Any]]:
        recs = sorted(self.store.cached(), key=lambda r: (r["network"], r["listen_address"]))
        return [r for r in recs if network is None or r["network"] == network]

    async def get(self, network: str, address: str) -> tuple[dict[str, Any], int]:
        found = await self.store.get(key(network, address))
        if found is None:
            raise NotFound(f"Network forward {address!r} not found on network {network!r}")
        return found

    @staticmethod
    def listen(network: str, config: dict[str, str], value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise BadRequest("No listen_address provided")
        try:
            addr = ip_address(value.strip())
        except ValueError:
            raise BadRequest(f"Invalid listen_address {value!r}: not an IP address") from None
        if addr.is_unspecified or addr.is_multicast:
            raise BadRequest(f"Invalid listen_address {addr}: a unicast address is needed")
        gw = gateway(config) if addr.version == 4 else gateway6(config)
        if gw is not None and addr in gw.network:
            raise BadRequest(f"Invalid listen_address {addr}: it is inside the subnet of "
                             f"network {network!r}; use an address outside it")
        return str(addr)

    def build(self, network: str, config: dict[str, str], address: str,
              body: dict[str, Any], base: dict[str, Any] | None = None,
              patch: bool = False) -> dict[str, Any]:
        version = ip_address(address).version
        rec = dict(base or {"network": network, "listen_address": address,
                            "description": "", "config": {}, "ports": [],
                            "project": "default"})
        if not patch or "description" in body:
            rec["description"] = description(body.get("description"))
        if not patch or "config" in body:
            cfg = check_config(body.get("config"), config, network, version)
            rec["config"] = {**rec["config"], **cfg} if patch else cfg
        if not patch or "ports" in body:
            rec["ports"] = check_ports(body.get("ports"), config, network, version)
        return rec

    async def create(self, network: str, config: dict[str, str], body: dict[str, Any]
                     ) -> dict[str, Any]:
        address = self.listen(network, config, body.get("listen_address"))
        rec = self.build(network, config, address, body)
        for other in self.records():
            if other["listen_address"] == address:
                raise Conflict(f"A forward for {address} already exists (network "
                               f"{other['network']!r})")
        await self.store.create(key(network, address), rec, f"Network forward {address!r}")
        return rec

    async def update(self, network: str, config: dict[str, str], address: str,
                     body: dict[str, Any], expected: str | None, patch: bool
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
        current, rev = await self.get(network, address)
        check_etag(expected, forward_etag(current))
        new = self.build(network, config, address, body, current, patch)
        await self.store.update(key(network, address), new, rev)
        return current, new

    async def put_back(self, rec: dict[str, Any]) -> None:
        found = await self.store.get(key(rec["network"], rec["listen_address"]))
        if found is None:
            await self.store.create(key(rec["network"], rec["listen_address"]), rec)
        else:
            await self.store.update(key(rec["network"], rec["listen_address"]), rec,
                                    found[1])

    async def delete(self, network: str, address: str) -> dict[str, Any]:
        rec, _ = await self.get(network, address)
        await self.store.delete(key(network, address))
        return rec
