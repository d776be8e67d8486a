"""Static DHCP leases: LXD's ``ipv4.address``/``ipv6.address`` on a NIC of a managed bridge.

Each one is a dnsmasq host entry (``--dhcp-hostsdir``), one file per MAC, so setting,
changing and clearing one NIC never rewrites another's. dnsmasq reads a new file by
itself (inotify) but forgets a changed or removed entry only on SIGHUP, so every change
is followed by one. The files are also the record of which address belongs to which NIC:
uniqueness is checked against them, and ``lxc network list-leases`` marks them STATIC.

An address may also be held by another guest's dynamic lease (dnsmasq's lease file).
dnsmasq would then quietly hand the NIC some other address, so ``dynamic_holders`` looks
first: a holder that still answers on the bridge is a 409 naming it, one that does not
(a stopped instance, a leftover) has its lease released so the address goes where asked.
LXD 5.0 checks only other NICs' static addresses and leaves the guest with a surprise.

Blocking functions (file IO, signals, a neighbour probe): the service runs them in a
thread, under the network's lock so two NICs cannot both take one address.
"""

from __future__ import annotations

import os
import re
import signal
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from shared.errors import BadRequest, Conflict

from .drivers import bridge_config as bc
from .drivers import dnsmasq, neigh

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I)


def hosts_dir(state_dir: Path) -> Path:
    return state_dir / dnsmasq.HOSTS_DIR


def _file(state_dir: Path, hwaddr: str) -> Path:
    return hosts_dir(state_dir) / hwaddr.replace(":", "-")


def check_addresses(network: str, config: dict[str, str], ipv4: str, ipv6: str
                    ) -> tuple[str, str]:
    """The NIC's static addresses, normalised; a 400 naming the rule that is broken."""
    out = []
    for key, value, gw in (("ipv4.address", ipv4, bc.gateway(config)),
                           ("ipv6.address", ipv6, bc.gateway6(config))):
        value = (value or "").strip()
        if not value:
            out.append("")
            continue
        version = 4 if key == "ipv4.address" else 6
        try:
            addr = ip_address(value)
        except ValueError:
            raise BadRequest(f"Invalid NIC {key!r}: {value!r} is not an IPv{version} "
                             "address (no prefix length: the network's subnet is used)"
                             ) from None
        if addr.version != version:
            raise BadRequest(f"Invalid NIC {key!r}: {value!r} is not an IPv{version} address")
        if gw is None:
            raise BadRequest(f"Cannot use NIC {key!r}: network {network!r} has no IPv{version} "
                             "subnet (its ipv%d.address is none)" % version)
        if addr not in gw.network:
            raise BadRequest(f"Invalid NIC {key!r}: {value} is not inside the subnet "
                             f"{gw.network} of network {network!r}")
        if addr == gw.ip:
            raise BadRequest(f"Invalid NIC {key!r}: {value} is the gateway address of "
                             f"network {network!r}")
        if isinstance(addr, IPv4Address) and addr in (gw.network.network_address,
                                                       gw.network.broadcast_address):
            raise BadRequest(f"Invalid NIC {key!r}: {value} is the network or broadcast "
                             f"address of {gw.network}")
        if version == 6 and not bc.flag(config, "ipv6.dhcp.stateful"):
            raise BadRequest(f"Cannot use NIC 'ipv6.address' on network {network!r}: it "
                             "needs ipv6.dhcp.stateful=true (SLAAC picks its own address)")
        out.append(str(addr))
    return out[0], out[1]


def entries(state_dir: Path) -> list[dict[str, str]]:
    """Every static lease of a network: ``{hwaddr, ipv4, ipv6, hostname}``."""
    return dnsmasq.read_hosts(state_dir)


def current(state_dir: Path, hwaddr: str) -> dict[str, str] | None:
    return next((e for e in entries(state_dir) if e["hwaddr"] == hwaddr.lower()), None)


def dynamic_holders(state_dir: Path, bridge: str, hwaddr: str, ipv4: str, ipv6: str
                    ) -> set[str]:
    """The MACs whose dynamic leases hold ``ipv4``/``ipv6`` but are stale (nobody answers
    for the address on the bridge): release them once the static entry is written. A
    holder still in use is a 409 naming it (its lease hostname is the instance name)."""
    wanted = {ip_address(a): key for key, a in (("ipv4.address", ipv4),
                                                ("ipv6.address", ipv6)) if a}
    stale: set[str] = set()
    if not wanted:
        return stale
    static = {(e["hwaddr"], ip_address(a)) for e in entries(state_dir)
              for a in (e["ipv4"], e["ipv6"]) if a}
    for lease in dnsmasq.read_leases(state_dir):
        try:
            addr = ip_address(lease["address"])
        except ValueError:
            continue
        if addr not in wanted or lease["hwaddr"] == hwaddr.lower() or \
                (lease["hwaddr"], addr) in static:  # a static lease: write() says 409
            continue
        holder = (f"instance {lease['hostname']!r} (MAC {lease['hwaddr']})"
                  if lease["hostname"] else f"the NIC with MAC {lease['hwaddr']}")
        if not lease["hwaddr"]:
            raise Conflict(f"NIC {wanted[addr]!r} {addr} is held by a DHCPv6 lease of a "
                           "client Corral cannot release (its DUID has no MAC); choose "
                           "another address")
        answer = neigh.answering_mac(bridge, str(addr))
        if answer is not None:
            also = "" if answer == lease["hwaddr"] else f" (MAC {answer} answers for it)"
            raise Conflict(f"NIC {wanted[addr]!r} {addr} is in use on network {bridge!r}: "
                           f"{holder} holds it as a dynamic DHCP lease{also}; choose "
                           "another address, or stop that instance first (its lease then "
                           "goes to this NIC)")
        stale.add(lease["hwaddr"])
    return stale


def write(state_dir: Path, hwaddr: str, hostname: str, ipv4: str, ipv6: str,
          owner: str = "") -> bool:
    """Make ``hwaddr``'s entry say these addresses (both empty: remove it); 409 when
    another NIC has one of them. Returns whether anything changed (then dnsmasq reloads).

    ``owner`` (``project/instance``) is kept in the entry: an entry of the same owner
    under another MAC is one this instance left behind (a create that failed after its
    NICs were resolved, a NIC given a new MAC) and is replaced, never a conflict."""
    hwaddr = hwaddr.lower()
    if not _MAC.match(hwaddr):
        raise BadRequest(f"Invalid NIC MAC address {hwaddr!r}")
    for other in entries(state_dir) if ipv4 or ipv6 else []:  # most NICs have none
        if other["hwaddr"] == hwaddr:
            continue
        for key, mine, theirs in (("ipv4.address", ipv4, other["ipv4"]),
                                  ("ipv6.address", ipv6, other["ipv6"])):
            if mine and mine == theirs and owner and other.get("owner") == owner:
                _file(state_dir, other["hwaddr"]).unlink(missing_ok=True)
            elif mine and mine == theirs:
                who = f" ({other['hostname']})" if other["hostname"] else ""
                raise Conflict(f"NIC {key!r} {mine} is already the static address of "
                               f"another NIC{who} (MAC {other['hwaddr']})")
    path = _file(state_dir, hwaddr)
    if not ipv4 and not ipv6:
        if not path.exists():
            return False
        path.unlink()
        reload(state_dir)
        return True
    parts = [hwaddr] + ([ipv4] if ipv4 else []) + ([f"[{ipv6}]"] if ipv6 else [])
    if hostname and _HOSTNAME.match(hostname):
        parts.append(hostname)
    text = (f"{dnsmasq.OWNER}{owner}\n" if owner else "") + ",".join(parts) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    hosts_dir(state_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")  # dnsmasq skips dot files
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    reload(state_dir)
    return True


def remove(state_dir: Path, hwaddrs: set[str]) -> int:
    """Drop the entries of these MACs (a deleted instance's NICs); how many went."""
    n = 0
    for mac in hwaddrs:
        path = _file(state_dir, mac.lower())
        if path.exists():
            path.unlink()
            n += 1
    if n:
        reload(state_dir)
    return n


def reload(state_dir: Path) -> None:
    """SIGHUP the network's dnsmasq (verified PID): it rereads its host entries."""
    pid = dnsmasq.running_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
