"""macvlan, routed and p2p NICs of real containers through the stock client, each
reaching a peer; a managed macvlan network.

Every peer is a network namespace on a veth pair the test makes (198.18.0.0/15 and
203.0.113.0/24, ranges no one routes): macvlan NICs sit on the host end of a pair whose
other end is in the peer namespace; a routed NIC reaches a namespace through the host's
routes; a p2p NIC's host end is the peer itself. Nothing leaves the machine.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

import pytest

from .stack import wait_for
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


@pytest.fixture
def peer():
    """Factory: (host end, namespace) of a veth pair whose other end is in a new namespace
    with ``address`` (CIDR) and, if given, a default route via ``gateway``."""
    made: list[tuple[str, str]] = []

    def make(address: str, gateway: str = "", host_address: str = "") -> tuple[str, str]:
        tag = secrets.token_hex(3)[:5]
        ns, host_end, ns_end = f"crtn{tag}", f"crtn{tag}a", f"crtn{tag}b"
        made.append((host_end, ns))
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        if host_address:
            sh("ip", "addr", "add", host_address, "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "-n", ns, "addr", "add", address, "dev", ns_end)
        sh("ip", "-n", ns, "link", "set", ns_end, "up")
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
        return host_end, ns

    yield make
    for host_end, ns in made:
        sh("ip", "link", "del", host_end, check=False)
        sh("ip", "netns", "del", ns, check=False)


def bare(world, stack, tag: str) -> str:
    """A stopped container with only a root disk (no NIC from a profile)."""
    name = world.name(tag)
    lxc(stack, "init", world.image, name, "--no-profiles", "-s", world.pool)
    return name


def ping(stack, name: str, address: str) -> bool:
    r = lxc(stack, "exec", name, "--", "ping", "-c", "1", "-W", "2", address, check=False)
    return r.returncode == 0


def test_macvlan_nic_reaches_a_peer(world, api, stack, peer):
    parent, _ns = peer("203.0.113.6/24")
    c = bare(world, stack, "mv")
    lxc(stack, "config", "device", "add", c, "m0", "nic", "nictype=macvlan",
        f"parent={parent}", "name=eth1")
    lxc(stack, "start", c)
    lxc(stack, "exec", c, "--", "ip", "addr", "add", "203.0.113.5/24", "dev", "eth1")
    assert wait_for(lambda: ping(stack, c, "203.0.113.6"), 15) is None
    hwaddr = world.get(c)["config"]["volatile.m0.hwaddr"]
    shown = lxc(stack, "exec", c, "--", "ip", "link", "show", "eth1").stdout
    assert hwaddr in shown and "macvlan" not in parent
    world.remove(c)


def test_managed_macvlan_network(world, api, stack, peer):
    parent, _ns = peer("203.0.113.16/24")
    net = f"{world.prefix}m"
    lxc(stack, "network", "create", net, "--type", "macvlan", f"parent={parent}")
    try:
        got = api.get(f"/1.0/networks/{net}").json()["metadata"]
        assert got["type"] == "macvlan" and got["config"] == {"parent": parent}
        c = bare(world, stack, "mvn")
        lxc(stack, "config", "device", "add", c, "eth1", "nic", f"network={net}",
            "name=eth1")
        lxc(stack, "start", c)
        lxc(stack, "exec", c, "--", "ip", "addr", "add", "203.0.113.15/24", "dev", "eth1")
        assert wait_for(lambda: ping(stack, c, "203.0.113.16"), 15) is None
        assert api.get(f"/1.0/networks/{net}").json()["metadata"]["used_by"] == [
            f"/1.0/instances/{c}"]
        r = lxc(stack, "network", "delete", net, check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
        world.remove(c)
        # Bad input: no parent, a parent that does not exist, a key macvlan lacks.
        for args, words in ((["m2x"], "needs 'parent'"),
                            (["parent=nosuchif0"], "does not exist"),
                            ([f"parent={parent}", "ipv4.address=auto"], "Invalid config key")):
            r = lxc(stack, "network", "create", f"{world.prefix}x", "--type", "macvlan",
                    *[a for a in args if "=" in a], check=False)
            assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
    finally:
        lxc(stack, "network", "delete", net, check=False)
    assert api.get(f"/1.0/networks/{net}").status_code == 404


def test_routed_nic_reaches_a_peer(world, api, stack, peer):
    n = secrets.randbelow(200) + 20
    host_end, ns = peer(f"198.18.{n}.2/24", gateway=f"198.18.{n}.1",
                        host_address=f"198.18.{n}.1/24")
    address = f"198.19.{n}.10"
    c = bare(world, stack, "rt")
    lxc(stack, "config", "device", "add", c, "r0", "nic", "nictype=routed",
        f"ipv4.address={address}", "name=eth1", f"parent={host_end}")
    lxc(stack, "start", c)
    addrs = lxc(stack, "exec", c, "--", "ip", "-4", "addr", "show", "eth1").stdout
    assert f"{address}/32" in addrs, addrs
    routes = lxc(stack, "exec", c, "--", "ip", "-4", "route").stdout
    assert "default via 169.254.0.1" in routes, routes
    veth = world.get(c)["config"]["volatile.r0.host_name"]
    assert f"{address} dev {veth}" in sh("ip", "-4", "route", "show", address).stdout
    assert wait_for(lambda: ping(stack, c, f"198.18.{n}.2"), 30) is None
    # And the peer reaches the instance back through the host's route.
    r = sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", address,
           check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # The parent answers ARP for the instance's address (its segment reaches it).
    assert address in sh("ip", "neigh", "show", "proxy", "dev", host_end).stdout
    world.remove(c)
    assert not sh("ip", "-4", "route", "show", address).stdout.strip()
    assert address not in sh("ip", "neigh", "show", "proxy", "dev", host_end).stdout

    # A routed NIC without an address, or with a bad one, is refused before it starts.
    c2 = bare(world, stack, "rt2")
    r = lxc(stack, "config", "device", "add", c2, "r0", "nic", "nictype=routed",
            check=False)
    started = r.returncode == 0 and lxc(stack, "start", c2, check=False)
    assert r.returncode != 0 or started.returncode != 0
    assert "needs 'ipv4.address'" in (r.stderr + (started.stderr if started else ""))


def test_p2p_nic_reaches_its_host_end(world, api, stack):
    c = bare(world, stack, "p2p")
    lxc(stack, "config", "device", "add", c, "p0", "nic", "nictype=p2p", "name=eth1")
    lxc(stack, "start", c)
    veth = world.get(c)["config"]["volatile.p0.host_name"]
    sh("ip", "addr", "add", "169.254.77.1/30", "dev", veth)
    sh("ip", "link", "set", veth, "up")
    lxc(stack, "exec", c, "--", "ip", "addr", "add", "169.254.77.2/30", "dev", "eth1")
    assert wait_for(lambda: ping(stack, c, "169.254.77.1"), 15) is None
    assert "master" not in sh("ip", "link", "show", veth).stdout  # on no bridge
    world.remove(c)
