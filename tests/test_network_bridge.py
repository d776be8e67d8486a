"""Managed bridge networks and NICs on real kernel objects.

Every bridge, veth, netns and dnsmasq here carries a ``crt`` + 5 hex prefix and is removed
by a finalizer even when a test fails. Traffic stays on the bridges and namespaces the
tests create: dnsmasq never has an upstream, the namespaces get no default route.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from services.network import nic
from services.network.drivers import BridgeDriver, dnsmasq, load, nft
from services.network.drivers import bridge_config as bc
from services.network.subnet import (
    host_ipv4_networks,
    pick_free_ipv4_subnet,
    pick_free_ula_subnet,
)
from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound

from .stack import wait_for

pytestmark = pytest.mark.root

BUSYBOX = "/bin/busybox"
UDHCPC_SCRIPT = """#!/bin/sh
# Applies udhcpc's lease with ip(8); deliberately no default route (no way off the host).
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew) ip -4 addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
esac
"""


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def del_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


@pytest.fixture
def prefix() -> str:
    return "crt" + secrets.token_hex(3)[:5]


@pytest.fixture
def corral_dir():
    path = Path(tempfile.mkdtemp(prefix="crtnet"))
    path.chmod(0o755)  # dnsmasq drops to an unprivileged user and reads its hosts dir
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def networks(corral_dir):
    """Factory of bridge drivers; every network made is torn down, whatever happens."""
    made: list[BridgeDriver] = []

    def make(name: str, config: dict[str, str] | None = None) -> BridgeDriver:
        drv = load(name, "bridge", config or {}, corral_dir)
        made.append(drv)
        return drv

    yield make
    for drv in made:
        try:
            drv.delete()
        except CorralError:
            pass
        pid = dnsmasq.running_pid(drv.state_dir)
        if pid:
            os.kill(pid, 9)
        sh("nft", "delete", "table", "inet", nft.table_name(drv.name), check=False)
        try:
            del_link(drv.name)
        except Exception:
            pass


@pytest.fixture
def links():
    """Names of links a test creates by hand; deleted at the end."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            del_link(name)
        except Exception:
            pass


@pytest.fixture
def netns(prefix, links):
    """Factory: a namespace joined to a bridge by a veth (host end ``<ns>h``)."""
    made: list[str] = []

    def make(suffix: str, bridge: str) -> tuple[str, str]:
        ns, host = f"{prefix}{suffix}", f"{prefix}{suffix}h"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        links.append(host)
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", f"{prefix}{suffix}n")
        sh("ip", "link", "set", f"{prefix}{suffix}n", "netns", ns)
        sh("ip", "-n", ns, "link", "set", f"{prefix}{suffix}n", "name", "eth0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "set", host, "master", bridge, "up")
        return ns, host

    yield make
    for ns in made:
        sh("ip", "netns", "del", ns, check=False)


# -- config and names (no kernel objects) --------------------------------------------------

@pytest.mark.parametrize("config, words", [
    ({"ipv4.adress": "auto"}, "Invalid config key 'ipv4.adress'"),
    ({"ipv4.address": "10.1.2.1"}, "needs a prefix"),
    ({"ipv4.address": "10.1.2.0/24"}, "network or broadcast"),
    ({"ipv4.address": "300.1.2.1/24"}, "ipv4.address"),
    ({"ipv4.address": "10.1.2.1/31"}, "between /8 and /30"),
    ({"ipv4.nat": "maybe"}, "not a boolean"),
    ({"ipv4.dhcp": "2"}, "not a boolean"),
    ({"ipv4.dhcp.ranges": "10.1.2.9"}, "START-END"),
    ({"ipv4.address": "10.1.2.1/24", "ipv4.dhcp.ranges": "10.9.9.2-10.9.9.9"}, "not inside"),
    ({"ipv4.dhcp.ranges": "10.1.2.9-10.1.2.3"}, "starts after"),
    ({"ipv4.dhcp.expiry": "1y"}, "ipv4.dhcp.expiry"),
    ({"ipv4.dhcp.expiry": "30s"}, "at least 2m"),
    ({"dns.domain": "bad_domain"}, "dns.domain"),
    ({"bridge.mtu": "100"}, "between 1280 and 16384"),
    ({"bridge.mtu": "abc"}, "bridge.mtu"),
    ({"bridge.hwaddr": "01:16:3e:00:00:01"}, "unicast MAC"),
    ({"bridge.driver": "openvswitch"}, "'bridge.driver=openvswitch' is valid in LXD but not "
                                       "supported by Corral yet"),
    ({"bridge.driver": "openvswitch"}, "use bridge.driver=native"),  # and says why
    ({"ipv6.address": "fd00::1"}, "needs a prefix"),
    ({"ipv4.nat": True}, "must be strings"),
])
def test_validate_config_errors(config, words):
    with pytest.raises(BadRequest) as exc:
        bc.validate(config)
    assert exc.value.code == 400 and words in exc.value.message


def test_validate_config_defaults():
    assert bc.validate({}) == {"ipv4.address": "auto", "ipv4.nat": "true",
                               "ipv6.address": "none"}
    cfg = bc.validate({"ipv4.address": "10.7.7.1/24", "user.note": "x"})
    assert cfg == {"ipv4.address": "10.7.7.1/24", "ipv6.address": "none", "user.note": "x"}
    assert bc.setting(cfg, "dns.domain") == "corral"
    assert bc.setting(cfg, "ipv4.nat") == "false"
    assert bc.dhcp_ranges(cfg) == [(IPv4Address("10.7.7.2"), IPv4Address("10.7.7.254"))]


@pytest.mark.parametrize("name", ["a", "x" * 16, "br/0", "br:0", "br 0", "..", "none", "é1"])
def test_network_name_rules(name, corral_dir):
    with pytest.raises(BadRequest):
        load(name, "bridge", {}, corral_dir)


def test_unknown_network_type(corral_dir):
    with pytest.raises(BadRequest, match="Unsupported network type"):
        load("crtok", "ovn", {}, corral_dir)


# -- subnet picking -----------------------------------------------------------------------

class Scripted:
    """An RNG that returns given /24 indexes (x*256+y for 10.x.y.0/24) in order."""

    def __init__(self, *nets: str) -> None:
        self.values = [int(IPv4Network(n).network_address) >> 8 & 0xFFFF for n in nets]

    def randrange(self, stop: int) -> int:
        return self.values.pop(0)


def test_pick_subnet_avoids_host_addresses_routes_and_taken(prefix, links):
    br = f"{prefix}s"
    links.append(br)
    with IPRoute() as ipr:
        ipr.link("add", ifname=br, kind="bridge")
        Path(f"/proc/sys/net/ipv6/conf/{br}/disable_ipv6").write_text("1")
        idx = ipr.link_lookup(ifname=br)[0]
        ipr.addr("add", index=idx, address="10.0.0.1", prefixlen=9)  # 10.0-10.127
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="10.150.0.0/16", oif=idx)
    host = host_ipv4_networks()
    assert IPv4Network("10.0.0.0/9") in host and IPv4Network("10.150.0.0/16") in host
    rng = Scripted("10.5.5.0/24", "10.150.3.0/24", "10.200.1.0/24", "10.201.2.0/24")
    assert pick_free_ipv4_subnet([], rng) == IPv4Network("10.200.1.0/24")
    rng = Scripted("10.5.5.0/24", "10.200.1.0/24", "10.201.2.0/24")
    assert pick_free_ipv4_subnet([IPv4Network("10.200.0.0/16")], rng) == \
        IPv4Network("10.201.2.0/24")
    for _ in range(200):  # real randomness never lands on anything the host uses
        net = pick_free_ipv4_subnet([])
        assert net.prefixlen == 24 and net.subnet_of(IPv4Network("10.0.0.0/8"))
        assert not any(net.overlaps(h) for h in host)


def test_pick_subnet_scans_when_random_misses():
    host = [IPv4Network("10.0.0.0/9"), IPv4Network("10.128.0.0/10")]  # all but 10.192/10
    rng = Scripted(*["10.1.1.0/24"] * 1000)
    assert pick_free_ipv4_subnet([], rng, host) == IPv4Network("10.192.0.0/24")
    with pytest.raises(Conflict, match="No free IPv4"):
        pick_free_ipv4_subnet([IPv4Network("10.0.0.0/8")], Scripted(*["10.1.1.0/24"] * 1000),
                              [])


# -- bridge lifecycle ---------------------------------------------------------------------

def dnsmasq_sockets(pid: int) -> list[str]:
    out = sh("ss", "-H", "-lnup").stdout + sh("ss", "-H", "-lntp").stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_create_state_and_delete_leave_nothing(networks, prefix):
    net = networks(f"{prefix}b")
    cfg = net.create()
    gw = IPv4Interface(cfg["ipv4.address"])
    assert cfg["ipv4.nat"] == "true" and gw.network.prefixlen == 24
    assert gw.ip == gw.network.network_address + 1 and gw.network.subnet_of(
        IPv4Network("10.0.0.0/8"))
    assert net.exists() and net.is_running()

    st = net.state()
    assert st["state"] == "up" and st["type"] == "broadcast" and st["mtu"] == 1500
    assert {"family": "inet", "address": str(gw.ip), "netmask": "24",
            "scope": "global"} in st["addresses"]
    assert st["hwaddr"].startswith("00:16:3e:") and st["bridge"]["upper_devices"] == []
    assert set(st["counters"]) == {"bytes_received", "bytes_sent", "packets_received",
                                   "packets_sent"}

    pid = dnsmasq.running_pid(net.state_dir)
    assert pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert f"--interface={net.name}" in argv and "--no-resolv" in argv
    socks = dnsmasq_sockets(pid)
    assert socks and all(s in (f"{gw.ip}:53", f"0.0.0.0%{net.name}:67") for s in socks), socks

    rules = sh("nft", "list", "table", "inet", nft.table_name(net.name)).stdout
    assert f"ip saddr {gw.network}" in rules and "masquerade" in rules

    with pytest.raises(Conflict):
        networks(net.name).create()  # the interface exists already

    net.delete()
    assert not link_exists(net.name)
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or not cmdline.read_bytes()  # gone (or a zombie)
    assert not nft.table_exists(net.name)
    assert not net.state_dir.exists()
    with pytest.raises(NotFound):
        net.state()
    net.delete()  # idempotent


def udhcpc(ns: str, hostname: str, script: Path) -> None:
    sh("ip", "netns", "exec", ns, BUSYBOX, "udhcpc", "-i", "eth0", "-q", "-n", "-t", "5",
       "-T", "1", "-x", f"hostname:{hostname}", "-s", str(script), timeout=40)


def ns_ipv4(ns: str) -> IPv4Interface:
    out = sh("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()
    return IPv4Interface(out[out.index("inet") + 1])


def test_dhcp_dns_and_ping_between_namespaces(networks, netns, prefix, corral_dir):
    net = networks(f"{prefix}d", {"ipv4.address": "auto", "dns.domain": "lab.corral"})
    gw = IPv4Interface(net.create()["ipv4.address"])
    script = corral_dir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    ns_a, host_a = netns("a", net.name)
    ns_b, host_b = netns("b", net.name)
    name_a, name_b = f"{prefix}-one", f"{prefix}-two"
    udhcpc(ns_a, name_a, script)
    udhcpc(ns_b, name_b, script)
    ip_a, ip_b = ns_ipv4(ns_a), ns_ipv4(ns_b)
    assert ip_a.network == gw.network and ip_b.network == gw.network and ip_a != ip_b

    leases = {lease["hostname"]: lease for lease in net.leases()}
    assert leases[name_a]["address"] == str(ip_a.ip)
    assert leases[name_b] == {"hostname": name_b, "hwaddr": leases[name_b]["hwaddr"],
                              "address": str(ip_b.ip), "type": "dynamic",
                              "location": "none"}
    assert sorted(net.state()["bridge"]["upper_devices"]) == sorted([host_a, host_b])

    for query in (name_b, f"{name_b}.lab.corral"):
        out = sh("ip", "netns", "exec", ns_a, BUSYBOX, "nslookup", query, str(gw.ip)).stdout
        assert f"Address: {ip_b.ip}" in out, out
    sh("ip", "netns", "exec", ns_a, BUSYBOX, "ping", "-c1", "-W5", str(ip_b.ip))


def test_start_recovers_from_dead_dnsmasq_and_reboot(networks, prefix):
    net = networks(f"{prefix}r")
    cfg = net.create()
    first = dnsmasq.running_pid(net.state_dir)
    net.start()  # already fine: nothing changes
    assert dnsmasq.running_pid(net.state_dir) == first

    dnsmasq.stop(net.state_dir)  # dnsmasq died
    assert not net.is_running()
    net.start()
    assert dnsmasq.running_pid(net.state_dir) not in (None, first) and net.is_running()

    hwaddr = net.state()["hwaddr"]
    net.stop()  # what a reboot leaves: no bridge, no dnsmasq, no rules; leases kept
    assert not net.exists() and not nft.table_exists(net.name)
    assert (net.state_dir / dnsmasq.LEASES_FILE).exists()
    again = load(net.name, "bridge", cfg, net.corral_dir)
    again.start()
    assert again.is_running() and again.state()["hwaddr"] == hwaddr
    assert {"family": "inet", "address": cfg["ipv4.address"].split("/")[0], "netmask": "24",
            "scope": "global"} in again.state()["addresses"]


def test_dnsmasq_outlives_the_creating_process(networks, prefix, corral_dir):
    name = f"{prefix}o"
    net = networks(name)  # registered for cleanup; created by another process below
    code = ("import sys; from services.network.drivers import load; "
            f"print(load({name!r}, 'bridge', {{}}, {str(corral_dir)!r}).create()"
            "['ipv4.address'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=Path(__file__).parent.parent).stdout
    net.config = {"ipv4.address": out.strip(), "ipv4.nat": "true"}
    pid = dnsmasq.running_pid(net.state_dir)
    assert pid and net.is_running()
    net.delete()  # a process that did not start it stops it by its verified PID
    assert dnsmasq.running_pid(net.state_dir) is None and not net.exists()


def test_stale_pid_file_is_not_trusted(corral_dir):
    state = corral_dir / "networks" / "crtstale"
    state.mkdir(parents=True)
    (state / dnsmasq.PID_FILE).write_text(str(os.getpid()))  # a live process, not dnsmasq
    assert dnsmasq.running_pid(state) is None
    dnsmasq.stop(state)  # must not signal us
    (state / dnsmasq.PID_FILE).write_text("999999999")
    assert dnsmasq.running_pid(state) is None


def test_update_restarts_dnsmasq_and_keeps_old_on_error(networks, prefix):
    net = networks(f"{prefix}u")
    cfg = net.create()
    gw = IPv4Interface(cfg["ipv4.address"])
    old_pid = dnsmasq.running_pid(net.state_dir)
    with pytest.raises(BadRequest):
        net.update({**cfg, "bridge.mtu": "12"})
    assert dnsmasq.running_pid(net.state_dir) == old_pid

    lo, hi = gw.network.network_address + 10, gw.network.network_address + 20
    new = net.update({**cfg, "dns.domain": "example", "ipv4.dhcp.ranges": f"{lo}-{hi}",
                      "bridge.mtu": "1400", "ipv4.nat": "false"})
    assert new["ipv4.address"] == cfg["ipv4.address"]  # own address is no conflict
    pid = dnsmasq.running_pid(net.state_dir)
    assert pid and pid != old_pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "--domain=example" in argv and any(a.startswith(f"--dhcp-range={lo},{hi},")
                                              for a in argv)
    assert net.state()["mtu"] == 1400
    assert "masquerade" not in sh("nft", "list", "table", "inet",
                                  nft.table_name(net.name)).stdout


def test_address_overlapping_host_is_conflict(networks, prefix):
    first = networks(f"{prefix}x")
    gw = IPv4Interface(first.create()["ipv4.address"])
    other = networks(f"{prefix}y", {"ipv4.address": f"{gw.network.network_address + 9}/24"})
    with pytest.raises(Conflict, match="overlaps"):
        other.create()
    assert not other.exists()


def test_failure_half_way_undoes_everything(networks, prefix):
    # A real failure: something already holds <gw>:53, so dnsmasq cannot bind.
    net = networks(f"{prefix}f", {"ipv4.address": "auto"})
    addr = pick_free_ipv4_subnet([])
    gw = addr.network_address + 1
    net.config = {"ipv4.address": f"{gw}/24"}
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        blocker.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: gw is not configured yet
        blocker.bind((str(gw), 53))
        with pytest.raises(Internal, match="dnsmasq failed to start"):
            net.create()
    finally:
        blocker.close()
    assert not link_exists(net.name)
    assert not nft.table_exists(net.name)
    assert not net.state_dir.exists()


def test_existing_non_bridge_interface_is_conflict(networks, links, prefix):
    name = f"{prefix}v"
    links.append(name)
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{prefix}w")
    with pytest.raises(Conflict):
        networks(name).create()
    assert link_exists(name)  # not ours: left alone


# -- NICs ---------------------------------------------------------------------------------

def test_nic_names_and_neutral_nic():
    mac = nic.random_hwaddr()
    assert mac.startswith("00:16:3e:") and len(mac) == 17
    veth = nic.host_veth_name()
    assert veth.startswith("veth") and len(veth) == 12 and int(veth[4:], 16) >= 0
    n = nic.neutral_nic(0, {"type": "nic", "network": "crtbr"}, veth, mac, "crtbr")
    assert (n.name, n.nictype, n.bridge, n.parent, n.host_name, n.hwaddr, n.network) == \
        ("eth0", "bridged", "crtbr", "crtbr", veth, mac, "crtbr")
    n = nic.neutral_nic(1, {"type": "nic", "nictype": "bridged", "parent": "br0",
                            "name": "eth9", "mtu": "1400", "limits.max": "1Mbit"}, veth, mac)
    assert (n.bridge, n.name, n.mtu, n.network) == ("br0", "eth9", 1400, "")
    assert (n.limits_ingress, n.limits_egress) == ("1Mbit", "1Mbit")
    n = nic.neutral_nic(2, {"nictype": "macvlan", "parent": "eth0"}, veth, mac)
    assert (n.nictype, n.bridge, n.host_name, n.name) == ("macvlan", "", "", "eth2")
    for bad in ({"network": "a/b"}, {"nictype": "bridged"}, {"nictype": "sriov", "parent": "x"},
                {"network": "br0", "parent": "x"}, {"network": "br0", "hwaddr": "zz"},
                {"network": "br0", "limits.ingress": "fast"}, {"network": "br0", "foo": "1"}):
        with pytest.raises(BadRequest):
            nic.neutral_nic(0, bad, veth, mac)
    assert nic.limits_of({"limits.max": "1Gbit", "limits.egress": "1Mbit"}) == \
        ("1Gbit", "1Mbit")


def test_parse_bit_rate():
    assert nic.parse_bit_rate("k", "10Mbit") == 10_000_000
    assert nic.parse_bit_rate("k", "1Gbit") == 10**9
    assert nic.parse_bit_rate("k", "2Mibit") == 2 * 2**20
    assert nic.parse_bit_rate("k", "800") == 800
    for bad in ("10MB", "fast", "-1Mbit", "1.5Mbit", "0bit", ""):
        with pytest.raises(BadRequest):
            nic.parse_bit_rate("limits.ingress", bad)


def test_apply_and_clear_limits(links, prefix):
    host, peer = f"{prefix}l", f"{prefix}m"
    links.append(host)
    links.append(nic.ifb_name(host))
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
    with pytest.raises(BadRequest):
        nic.apply_limits(host, "10 parsecs", None)
    with pytest.raises(NotFound):
        nic.apply_limits(f"{prefix}z", "10Mbit", None)

    nic.apply_limits(host, "10Mbit", "5Mbit")
    ifb = nic.ifb_name(host)
    assert "qdisc htb 1: root" in sh("tc", "qdisc", "show", "dev", host).stdout
    assert "qdisc ingress ffff:" in sh("tc", "qdisc", "show", "dev", host).stdout
    assert "rate 10Mbit" in sh("tc", "class", "show", "dev", host).stdout
    assert f"Egress Redirect to device {ifb}" in sh("tc", "filter", "show", "dev", host,
                                                    "parent", "ffff:").stdout
    assert "rate 5Mbit" in sh("tc", "class", "show", "dev", ifb).stdout

    nic.apply_limits(host, "1Gbit", None)  # replaces: ingress only now, no ifb
    assert "rate 1Gbit" in sh("tc", "class", "show", "dev", host).stdout
    assert "ingress" not in sh("tc", "qdisc", "show", "dev", host).stdout
    assert not link_exists(ifb)

    nic.apply_limits(host, None, "2Mbit")
    nic.clear_limits(host)
    shown = sh("tc", "qdisc", "show", "dev", host).stdout
    assert "htb" not in shown and "ingress" not in shown
    assert not link_exists(ifb)
    nic.clear_limits(host)  # idempotent


# -- IPv6 ----------------------------------------------------------------------------------

DHCP6_CLIENT = Path(__file__).with_name("dhcp6_client.py")


def ns_ipv6(ns: str, scope: str = "global") -> list[IPv6Interface]:
    out = sh("ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", scope).stdout
    return [IPv6Interface(line.split()[3]) for line in out.splitlines()]


def ns_mac(ns: str) -> str:
    out = sh("ip", "-n", ns, "-o", "link", "show", "dev", "eth0").stdout.split()
    return out[out.index("link/ether") + 1]


def bridge_ipv6(name: str) -> list[tuple[str, int, int]]:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        return [(a.get_attr("IFA_ADDRESS"), a["prefixlen"], a["scope"])
                for a in ipr.get_addr(index=idx, family=socket.AF_INET6)]


def dnsmasq_argv(net: BridgeDriver) -> list[str]:
    pid = dnsmasq.running_pid(net.state_dir)
    assert pid, "dnsmasq is not running"
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def sysctl6(ifname: str, key: str) -> str:
    return Path(f"/proc/sys/net/ipv6/conf/{ifname}/{key}").read_text().strip()


def test_ipv6_auto_nat_slaac_in_a_namespace(networks, netns, prefix):
    """ULA /64 on the bridge, RA + SLAAC from dnsmasq, v6 NAT rules; ipv6.routing=false
    so the namespace learns the prefix but gets no default route (no way off the host)."""
    net = networks(f"{prefix}6", {"ipv4.address": "auto", "ipv4.nat": "false",
                                  "ipv6.address": "auto", "ipv6.nat": "true",
                                  "ipv6.routing": "false"})
    cfg = net.create()
    gw6 = IPv6Interface(cfg["ipv6.address"])
    assert gw6.network.prefixlen == 64 and gw6.network.subnet_of(IPv6Network("fd00::/8"))
    assert gw6.ip == gw6.network.network_address + 1
    assert (str(gw6.ip), 64, 0) in bridge_ipv6(net.name)
    assert sysctl6(net.name, "disable_ipv6") == "0" and sysctl6(net.name, "autoconf") == "0"

    argv = dnsmasq_argv(net)
    assert f"--listen-address={gw6.ip}" in argv and "--enable-ra" in argv
    assert f"--dhcp-range=::,constructor:{net.name},ra-stateless,ra-names" in argv
    assert f"--ra-param={net.name},600,0" in argv

    rules = sh("nft", "list", "table", "inet", nft.table_name(net.name)).stdout
    assert f"ip6 saddr {gw6.network}" in rules and "masquerade" in rules
    assert f'iifname "{net.name}" oifname != "{net.name}" drop' in rules
    assert "ip saddr" not in rules  # ipv4.nat=false

    ns, _host = netns("s", net.name)
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    wait_for(lambda: ns_ipv6(ns), 20, what="a SLAAC address in the namespace")
    addr = ns_ipv6(ns)[0]
    assert addr.network == gw6.network
    assert "default" not in sh("ip", "-n", ns, "-6", "route").stdout
    st = net.state()
    assert {"family": "inet6", "address": str(gw6.ip), "netmask": "64",
            "scope": "global"} in st["addresses"]


def test_ipv6_stateful_dhcpv6_lease(networks, netns, prefix):
    net = networks(f"{prefix}7", {"ipv4.address": "none", "ipv6.address": "auto",
                                  "ipv6.dhcp.stateful": "true", "ipv6.routing": "false"})
    gw6 = IPv6Interface(net.create()["ipv6.address"])
    argv = dnsmasq_argv(net)
    first, last = gw6.network.network_address + 2, gw6.network.broadcast_address
    assert f"--dhcp-range={first},{last},64,3600s" in argv
    ns, _host = netns("c", net.name)
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    mac = ns_mac(ns)
    r = sh("ip", "netns", "exec", ns, sys.executable, str(DHCP6_CLIENT), "eth0", mac,
           f"{prefix}-v6", "--apply", timeout=60)
    leased = IPv6Address(r.stdout.strip())
    assert leased in gw6.network and leased >= first
    assert IPv6Interface(f"{leased}/128") in ns_ipv6(ns)
    leases = net.leases()
    assert {"hostname": f"{prefix}-v6", "hwaddr": mac, "address": str(leased),
            "type": "dynamic", "location": "none"} in leases


def test_ipv6_routing_enables_forwarding_and_keeps_host_default_route(networks, prefix):
    def defaults() -> str:
        return sh("ip", "-6", "route", "show", "default").stdout

    before, was_on = defaults(), sysctl6("all", "forwarding") == "1"
    net = networks(f"{prefix}8", {"ipv4.address": "none", "ipv6.address": "auto"})
    net.create()
    assert sysctl6("all", "forwarding") == "1" and sysctl6(net.name, "forwarding") == "1"
    if not was_on:  # we turned it on: every accept_ra=1 became 2 (RAs still accepted)
        for name in os.listdir("/proc/sys/net/ipv6/conf"):
            assert sysctl6(name, "accept_ra") != "1", name
    assert defaults() == before
    rules = sh("nft", "list", "table", "inet", nft.table_name(net.name)).stdout
    assert f'meta nfproto ipv6 iifname "{net.name}" accept' in rules
    assert "--ra-param" not in " ".join(dnsmasq_argv(net))


def test_ipv6_update_on_and_off(networks, prefix):
    net = networks(f"{prefix}9", {"ipv4.address": "auto"})
    cfg = net.create()
    assert sysctl6(net.name, "disable_ipv6") == "1"
    assert "--enable-ra" not in dnsmasq_argv(net)
    explicit = str(pick_free_ula_subnet([]).network_address + 1) + "/64"
    cfg = net.update({**cfg, "ipv6.address": explicit, "ipv6.routing": "false"})
    assert cfg["ipv6.address"] == explicit
    assert (explicit.split("/")[0], 64, 0) in bridge_ipv6(net.name)
    assert "--enable-ra" in dnsmasq_argv(net)
    net.update({**cfg, "ipv6.address": "none"})
    assert not [a for a in bridge_ipv6(net.name) if a[2] == 0]
    assert "--enable-ra" not in dnsmasq_argv(net)
    assert "ip6" not in sh("nft", "list", "table", "inet", nft.table_name(net.name)).stdout


def test_ipv6_address_overlapping_host_is_conflict(networks, prefix):
    first = networks(f"{prefix}o", {"ipv4.address": "none", "ipv6.address": "auto",
                                    "ipv6.routing": "false"})
    gw6 = IPv6Interface(first.create()["ipv6.address"])
    clash = networks(f"{prefix}p", {"ipv4.address": "none", "ipv6.routing": "false",
                                    "ipv6.address": f"{gw6.network.network_address + 7}/64"})
    with pytest.raises(Conflict, match="overlaps"):
        clash.create()
    assert not link_exists(clash.name)


def test_ipv6_network_comes_back_after_a_reboot(networks, prefix):
    net = networks(f"{prefix}x", {"ipv4.address": "none", "ipv6.address": "auto",
                                  "ipv6.routing": "false", "raw.dnsmasq": "log-dhcp"})
    cfg = net.create()
    gw6 = IPv6Interface(cfg["ipv6.address"])
    assert (net.state_dir / dnsmasq.RAW_FILE).read_text() == "log-dhcp\n"
    net.stop()  # what a reboot leaves
    assert not net.exists()
    again = load(net.name, "bridge", cfg, net.corral_dir)
    again.start()
    assert again.is_running() and (str(gw6.ip), 64, 0) in bridge_ipv6(net.name)
    argv = dnsmasq_argv(again)
    assert "--enable-ra" in argv and f"--conf-file={net.state_dir / dnsmasq.RAW_FILE}" in argv
    assert f"ip6 saddr {gw6.network}" in sh("nft", "list", "table", "inet",
                                            nft.table_name(net.name)).stdout


def routes_on(name: str, family: str) -> str:
    return sh("ip", family, "route", "show", "dev", name, "proto", "static").stdout


def test_extra_routes_follow_the_config(networks, prefix):
    net = networks(f"{prefix}y", {"ipv4.address": "auto", "ipv4.routes": "10.254.77.0/24",
                                  "ipv6.address": "auto", "ipv6.routing": "false",
                                  "ipv6.routes": "fd51:2:3::/48,fd51:2:4::/48"})
    cfg = net.create()
    assert "10.254.77.0/24" in routes_on(net.name, "-4")
    six = routes_on(net.name, "-6")
    assert "fd51:2:3::/48" in six and "fd51:2:4::/48" in six
    cfg = net.update({**cfg, "ipv6.routes": "fd51:2:4::/48", "ipv4.routes": ""})
    assert "ipv4.routes" not in cfg and routes_on(net.name, "-4").strip() == ""
    six = routes_on(net.name, "-6")
    assert "fd51:2:3::/48" not in six and "fd51:2:4::/48" in six


def test_external_interfaces_are_attached_and_freed(networks, links, prefix):
    free, used = f"{prefix}e1", f"{prefix}e2"
    links.extend([free, used])
    with IPRoute() as ipr:
        for name in (free, used):
            ipr.link("add", ifname=name, kind="veth", peer=name + "p")
        ipr.addr("add", index=ipr.link_lookup(ifname=used)[0], address="10.254.78.1",
                 prefixlen=24)

    def master(name: str) -> int | None:
        with IPRoute() as ipr:
            return ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_attr("IFLA_MASTER")

    net = networks(f"{prefix}z", {"ipv4.address": "auto",
                                  "bridge.external_interfaces": f"{free}, {prefix}gone"})
    cfg = net.create()
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=net.name)[0]
    assert master(free) == idx
    cfg = net.update({k: v for k, v in cfg.items() if k != "bridge.external_interfaces"})
    assert master(free) in (None, 0)
    with pytest.raises(Conflict, match="global address"):
        net.update({**cfg, "bridge.external_interfaces": used})
    assert master(used) in (None, 0) and net.is_running()  # the old config is back
