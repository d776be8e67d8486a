"""NIC devices of instances: validation, names, MACs, the neutral NIC, live bandwidth limits.

What a device resolves to is a neutral :class:`~shared.messages.network.Nic` (bridge,
host-side name, MAC, MTU, limits); the instance drivers turn it into LXC keys or libvirt
XML themselves, so no driver syntax is built here. Limits are applied afterwards on the
host end of the veth, with LXD's meaning: ``limits.ingress`` is what the *instance*
receives, i.e. the host veth's egress (an htb qdisc on it); ``limits.egress`` is what the
instance sends, i.e. the host veth's ingress. This kernel has no ``police`` action, so
that direction is redirected (``mirred``) to an ``ifb`` device whose egress gets the htb
qdisc.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
import subprocess

from pyroute2 import IPRoute

from shared.errors import BadRequest, Internal, NotFound
from shared.messages.network import NicConfigReply

from .drivers.base import parse_bool, validate_network_name

TC = "/usr/sbin/tc"
NIC_KEYS = {"type", "nictype", "network", "parent", "name", "hwaddr", "mtu", "host_name",
            "limits.ingress", "limits.egress", "limits.max", "ipv4.address", "ipv6.address",
            "ipv4.gateway", "ipv6.gateway", "security.acls",
            "security.acls.default.ingress.action", "security.acls.default.egress.action",
            "security.acls.default.ingress.logged", "security.acls.default.egress.logged"}
NICTYPES = {"bridged", "macvlan", "p2p", "routed"}
# Which nictypes take which of the newer keys (LXD 5.0's nic_*.go validation).
_ONLY_FOR = {"ipv4.address": {"bridged", "routed"}, "ipv6.address": {"bridged", "routed"},
             "ipv4.gateway": {"routed"}, "ipv6.gateway": {"routed"},
             "security.acls": {"bridged"},
             **{f"security.acls.default.{d}.{w}": {"bridged"}
                for d in ("ingress", "egress") for w in ("action", "logged")}}
# LXD's routed NIC: the instance routes through link-local gateways the host side answers.
ROUTED_GW4, ROUTED_GW6 = "169.254.0.1", "fe80::1"
_BIT_UNITS = {"": 1, "bit": 1, "kbit": 10**3, "Mbit": 10**6, "Gbit": 10**9, "Tbit": 10**12,
              "Pbit": 10**15, "Ebit": 10**18, "Kibit": 2**10, "Mibit": 2**20,
              "Gibit": 2**30, "Tibit": 2**40, "Pibit": 2**50, "Eibit": 2**60}
_RATE = re.compile(r"^(\d+)([A-Za-z]*)$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)


def random_hwaddr(rng: random.Random | None = None) -> str:
    """A MAC in LXD's (Xensource) 00:16:3e prefix."""
    rng = rng or random.SystemRandom()
    return "00:16:3e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


def host_veth_name(rng: random.Random | None = None) -> str:
    """LXD's host-side name: ``veth`` + 8 hex digits (12 chars, under IFNAMSIZ)."""
    rng = rng or random.SystemRandom()
    return f"veth{rng.randrange(2**32):08x}"


def ifb_name(host_name: str) -> str:
    """The ifb shaping a veth's ingress; derived from its name so clearing finds it."""
    return "ifb" + hashlib.sha256(host_name.encode()).hexdigest()[:12]


def parse_bit_rate(key: str, value: str) -> int:
    """LXD's bit-rate strings ("100Mbit", "1Gbit", "512Kibit") to bits per second."""
    m = _RATE.match(value.strip())
    unit = m.group(2) if m else None
    if not m or unit not in _BIT_UNITS:
        raise BadRequest(f"Invalid value for {key!r}: {value!r} (use a rate like 10Mbit, "
                         "1Gbit or 512kbit; units: bit, kbit, Mbit, Gbit, Tbit, Kibit, Mibit, "
                         "Gibit, Tibit)")
    bits = int(m.group(1)) * _BIT_UNITS[unit]
    if bits < 8:
        raise BadRequest(f"Invalid value for {key!r}: {value!r} is too small to shape "
                         "(leave the key unset for no limit)")
    return bits


def validate_nic_device(device: dict[str, str]) -> dict[str, str]:
    """Check a ``type: nic`` device; returns it with ``nictype``/``parent`` resolved.

    ``network: X`` means a managed bridge, whose interface is named like the network.
    """
    unknown = set(device) - NIC_KEYS
    if unknown:
        raise BadRequest(f"Invalid NIC device keys {sorted(unknown)} "
                         f"(known: {', '.join(sorted(NIC_KEYS))})")
    out = dict(device)
    if out.get("type", "nic") != "nic":
        raise BadRequest(f"Device type {out['type']!r} is not a NIC")
    if "network" in out:
        if out.get("nictype") or out.get("parent"):
            raise BadRequest("A NIC with 'network' cannot also set 'nictype' or 'parent'")
        validate_network_name(out["network"])
        out["nictype"], out["parent"] = "bridged", out["network"]
    nictype = out.get("nictype", "")
    if nictype not in NICTYPES:
        raise BadRequest(f"Invalid NIC 'nictype' {nictype!r} (supported: "
                         f"{', '.join(sorted(NICTYPES))}; or set 'network')")
    for k, types in _ONLY_FOR.items():
        if out.get(k) and nictype not in types:
            raise BadRequest(f"NIC key {k!r} is not valid for nictype {nictype!r} (only "
                             f"{', '.join(sorted(types))})")
    for d in ("ingress", "egress"):
        action = out.get(f"security.acls.default.{d}.action")
        if action and action not in ("allow", "reject", "drop"):
            raise BadRequest(f"Invalid NIC 'security.acls.default.{d}.action': {action!r} "
                             "(allow, reject or drop)")
        if out.get(f"security.acls.default.{d}.logged"):
            parse_bool(f"security.acls.default.{d}.logged",
                       out[f"security.acls.default.{d}.logged"])
    if out.get("security.acls") and not (out.get("ipv4.address") or out.get("ipv6.address")):
        raise BadRequest("NIC 'security.acls' needs 'ipv4.address' and/or 'ipv6.address' "
                         "(the static addresses its ingress rules match), or set "
                         "security.acls on the bridge network instead")
    if nictype == "routed":
        routed_addresses(out)  # 400s
        for k in ("ipv4.gateway", "ipv6.gateway"):
            if out.get(k, "auto") not in ("auto", "none"):
                raise BadRequest(f"Invalid NIC {k!r}: {out[k]!r} (auto or none)")
        if out.get("parent"):
            validate_network_name(out["parent"])
    elif nictype != "p2p":
        if not out.get("parent"):
            raise BadRequest(f"A {nictype} NIC needs 'parent' (the host interface)")
        validate_network_name(out["parent"])
    if "hwaddr" in out and not _MAC.match(out["hwaddr"]):
        raise BadRequest(f"Invalid NIC 'hwaddr' {out['hwaddr']!r} (like 00:16:3e:12:34:56)")
    if "mtu" in out and (not out["mtu"].isdigit() or not 576 <= int(out["mtu"]) <= 65535):
        raise BadRequest(f"Invalid NIC 'mtu' {out['mtu']!r} (an integer, 576 to 65535)")
    for key in ("limits.ingress", "limits.egress", "limits.max"):
        if out.get(key):
            parse_bit_rate(key, out[key])
    return out


def _split(value: str) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def routed_addresses(device: dict[str, str]) -> tuple[list[str], list[str]]:
    """A routed NIC's addresses as host routes (``a/32``, ``b/128``); 400 for a bad one
    or for none at all (a routed NIC is reachable only at the addresses it is given)."""
    out: tuple[list[str], list[str]] = ([], [])
    for key, version, plen in (("ipv4.address", 4, 32), ("ipv6.address", 6, 128)):
        for value in _split(device.get(key, "")):
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                raise BadRequest(f"Invalid NIC {key!r}: {value!r} is not an IPv{version} "
                                 "address") from None
            if addr.version != version:
                raise BadRequest(f"Invalid NIC {key!r}: {value!r} is not an IPv{version} "
                                 "address")
            out[version // 6].append(f"{addr}/{plen}")
    if not out[0] and not out[1]:
        raise BadRequest("A routed NIC needs 'ipv4.address' and/or 'ipv6.address' (the "
                         "addresses the host routes to it)")
    return out


def neutral_nic(index: int, device: dict[str, str], host_name: str, hwaddr: str,
                network: str = "") -> NicConfigReply:
    """The NIC a ``type: nic`` device makes, in no driver's syntax (each driver renders it).

    The device's own ``name``/``host_name``/``hwaddr`` win over the ones given (the
    instance's ``volatile.*`` keys or fresh ones); the guest name defaults to
    ``eth<index>``. A macvlan has no host-side interface of ours.
    """
    dev = validate_nic_device(device)
    ingress, egress = limits_of(dev)
    nictype = dev["nictype"]
    v4: list[str] = []
    v6: list[str] = []
    gw4 = gw6 = ""
    if nictype == "routed":
        v4, v6 = routed_addresses(dev)
        gw4 = ROUTED_GW4 if v4 and dev.get("ipv4.gateway", "auto") == "auto" else ""
        gw6 = ROUTED_GW6 if v6 and dev.get("ipv6.gateway", "auto") == "auto" else ""
    return NicConfigReply(
        name=dev.get("name") or f"eth{index}", nictype=nictype,
        parent=dev.get("parent", ""), bridge=dev["parent"] if nictype == "bridged" else "",
        host_name="" if nictype == "macvlan" else dev.get("host_name") or host_name,
        hwaddr=(dev.get("hwaddr") or hwaddr).lower(),
        mtu=int(dev["mtu"]) if dev.get("mtu") else None, network=network,
        limits_ingress=ingress, limits_egress=egress, ipv4_addresses=v4, ipv6_addresses=v6,
        ipv4_gateway=gw4, ipv6_gateway=gw6)


def limits_of(device: dict[str, str]) -> tuple[str | None, str | None]:
    """(ingress, egress) of a NIC device, ``limits.max`` filling whichever is unset."""
    top = device.get("limits.max") or None
    return device.get("limits.ingress") or top, device.get("limits.egress") or top


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([TC, *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise Internal(f"tc {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _htb(dev: str, bits: int) -> None:
    _tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    _tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
        "rate", f"{bits}bit", "ceil", f"{bits}bit")


def apply_limits(host_name: str, ingress: str | None, egress: str | None) -> None:
    """Shape a running NIC (replaces earlier limits; None/"" means no limit that way)."""
    in_bits = parse_bit_rate("limits.ingress", ingress) if ingress else None
    out_bits = parse_bit_rate("limits.egress", egress) if egress else None
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=host_name)
        if not found:
            raise NotFound(f"Host interface {host_name!r} does not exist; is the "
                           "instance running?")
        mtu = ipr.get_links(found[0])[0].get_attr("IFLA_MTU")
    clear_limits(host_name)
    try:
        if in_bits:
            _htb(host_name, in_bits)
        if out_bits:
            ifb = ifb_name(host_name)
            with IPRoute() as ipr:
                ipr.link("add", ifname=ifb, kind="ifb")
                idx = ipr.link_lookup(ifname=ifb)[0]
                ipr.link("set", index=idx, mtu=mtu, state="up")
            _htb(ifb, out_bits)
            _tc("qdisc", "add", "dev", host_name, "handle", "ffff:", "ingress")
            _tc("filter", "add", "dev", host_name, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", ifb)
    except Exception as err:
        clear_limits(host_name)
        if isinstance(err, Internal):
            raise
        raise Internal(f"Failed to apply limits on {host_name!r}: {err}") from err


def clear_limits(host_name: str) -> None:
    """Remove our qdiscs from the veth (if it still exists) and delete its ifb."""
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=host_name):
            shown = _tc("qdisc", "show", "dev", host_name, check=False).stdout
            if "qdisc htb 1: root" in shown:
                _tc("qdisc", "del", "dev", host_name, "root")
            if "qdisc ingress ffff:" in shown:
                _tc("qdisc", "del", "dev", host_name, "ingress")
        found = ipr.link_lookup(ifname=ifb_name(host_name))
        if found:
            ipr.link("del", index=found[0])
