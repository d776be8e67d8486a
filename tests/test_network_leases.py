"""Static DHCP leases: ``ipv4.address`` on a NIC of a managed bridge, through the stock client.

A container whose NIC asks for an address gets exactly that one from dnsmasq (its busybox
init runs udhcpc), ``lxc network list-leases`` marks it STATIC, an address outside the
subnet is a 400 and one another NIC holds a 409 (statically, or dynamically while that
guest is running; a stopped guest's dynamic lease is released to the NIC), the bus call
``network.lease_set`` moves a NIC's static address (dnsmasq reloaded), and a deleted
instance's lease is released with dnsmasq running on (its address is the next guest's).
The network has no NAT and no default route leaves it: nothing goes off the machine.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface

import pytest

from services.network import leases
from services.network.drivers import dhcp_release, dnsmasq
from shared.errors import CorralError
from shared.messages.network import NicLeaseRequest

from .stack import wait_for
from .test_network_bridge import (  # noqa: F401  (fixtures)
    DHCP6_CLIENT,
    UDHCPC_SCRIPT,
    corral_dir,
    links,
    netns,
    networks,
    ns_mac,
    prefix,
    udhcpc,
)
from .test_network_bridge import sh as bridge_sh
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def subnet(api, net: str) -> IPv4Interface:
    return IPv4Interface(api.get(f"/1.0/networks/{net}").json()["metadata"]["config"][
        "ipv4.address"])


def inet(world, name: str) -> list[str]:
    eth0 = (world.live(name).get("network") or {}).get("eth0") or {}
    return [a["address"] for a in eth0.get("addresses", []) if a["family"] == "inet"]


def test_static_lease_through_lxc(world, api, stack):
    gw = subnet(api, world.net)
    want = str(gw.network.network_address + 77)
    c1 = world.name("st1")
    lxc(stack, "init", world.image, c1, "-p", world.profile)
    lxc(stack, "config", "device", "override", c1, "eth0", f"ipv4.address={want}")
    lxc(stack, "start", c1)
    wait_for(lambda: inet(world, c1) == [want], 30)

    out = lxc(stack, "network", "list-leases", world.net, "--format", "csv").stdout
    rows = [line.split(",") for line in out.splitlines()]
    static = [r for r in rows if r[2] == want]
    assert static and static[0][3] == "STATIC", out
    assert not [r for r in rows if r[2] == want and r[3] == "DYNAMIC"], out
    hwaddr = world.get(c1)["config"]["volatile.eth0.hwaddr"]
    assert static[0][1] == hwaddr

    # Another NIC may not take the same address; the failed start leaves it stopped.
    c2 = world.name("st2")
    lxc(stack, "init", world.image, c2, "-p", world.profile)
    lxc(stack, "config", "device", "override", c2, "eth0", f"ipv4.address={want}")
    r = lxc(stack, "start", c2, check=False)
    assert r.returncode != 0 and "already the static address" in r.stderr, r.stderr
    assert world.live(c2)["status"] == "Stopped"
    # Outside the subnet, or the gateway: 400 with the reason.
    lxc(stack, "config", "device", "set", c2, "eth0", "ipv4.address=192.0.2.9")
    r = lxc(stack, "start", c2, check=False)
    assert r.returncode != 0 and "not inside the subnet" in r.stderr, r.stderr
    lxc(stack, "config", "device", "set", c2, "eth0", f"ipv4.address={gw.ip}")
    r = lxc(stack, "start", c2, check=False)
    assert r.returncode != 0 and "gateway address" in r.stderr, r.stderr

    # Deleting the instance forgets its static lease.
    world.remove(c1)
    out = lxc(stack, "network", "list-leases", world.net, "--format", "csv").stdout
    assert want not in out, out


async def test_lease_set_and_clear_over_the_bus(world, api, stack, bus, bus_config):
    """What the live-device side calls when a running NIC's ``ipv4.address`` changes."""
    gw = subnet(api, world.net)
    first, second = (str(gw.network.network_address + n) for n in (81, 82))
    mac = "00:16:3e:aa:bb:01"
    state_dir = stack.dir / "networks" / world.net

    async def ask(verb: str, **kw: str):
        req = NicLeaseRequest(network=world.net, hwaddr=mac, instance="busbox", **kw)
        return await bus.request("network", verb, req, node=bus_config.node, timeout=30)

    pid = dnsmasq.running_pid(state_dir)
    reply = await ask("lease_set", ipv4_address=first)
    assert reply.metadata == {"ipv4.address": first, "ipv6.address": ""}
    assert {"hwaddr": mac, "ipv4": first, "ipv6": "", "hostname": "busbox",
            "owner": "default/busbox"} in dnsmasq.read_hosts(state_dir)
    await ask("lease_set", ipv4_address=second)
    assert [e["ipv4"] for e in dnsmasq.read_hosts(state_dir) if e["hwaddr"] == mac] == \
        [second]
    assert dnsmasq.running_pid(state_dir) == pid  # reloaded (SIGHUP), never restarted
    leases = api.get(f"/1.0/networks/{world.net}/leases").json()["metadata"]
    assert {"hostname": "busbox", "hwaddr": mac, "address": second, "type": "static",
            "location": "none"} in leases
    # The same instance under a new MAC (a leftover of a failed create) takes it over;
    # another instance cannot.
    other = NicLeaseRequest(network=world.net, hwaddr="00:16:3e:aa:bb:02",
                            instance="busbox", ipv4_address=second)
    await bus.request("network", "lease_set", other, node=bus_config.node, timeout=30)
    assert [e["hwaddr"] for e in dnsmasq.read_hosts(state_dir) if e["ipv4"] == second] == \
        ["00:16:3e:aa:bb:02"]
    thief = NicLeaseRequest(network=world.net, hwaddr=mac, instance="other",
                            ipv4_address=second)
    with pytest.raises(CorralError) as err:
        await bus.request("network", "lease_set", thief, node=bus_config.node, timeout=30)
    assert err.value.code == 409
    await bus.request("network", "lease_clear", other, node=bus_config.node, timeout=30)
    await ask("lease_set", ipv4_address=second)
    with pytest.raises(CorralError) as err:
        await ask("lease_set", ipv4_address="10.255.255.300")
    assert err.value.code == 400
    await ask("lease_clear")
    assert not [e for e in dnsmasq.read_hosts(state_dir) if e["hwaddr"] == mac]


async def test_lease_set_moves_a_running_guest(world, api, stack, bus, bus_config):
    """The live path: a running container's static address changes with lease_set; at its
    next DHCP renewal the guest has the new one (its old lease is forgotten, so dnsmasq
    refuses the old address and offers the new)."""
    gw = subnet(api, world.net)
    first, second = (str(gw.network.network_address + n) for n in (101, 102))
    c = world.name("live")
    await asyncio.to_thread(lxc, stack, "init", world.image, c, "-p", world.profile)
    await asyncio.to_thread(lxc, stack, "config", "device", "override", c, "eth0",
                            f"ipv4.address={first}")
    await asyncio.to_thread(lxc, stack, "start", c)
    await asyncio.to_thread(wait_for, lambda: inet(world, c) == [first], 30)
    mac = world.get(c)["config"]["volatile.eth0.hwaddr"]
    req = NicLeaseRequest(network=world.net, hwaddr=mac, instance=c, ipv4_address=second)
    await bus.request("network", "lease_set", req, node=bus_config.node, timeout=30)

    def renewed() -> bool:
        lxc(stack, "exec", c, "--", "sh", "-c", "kill -USR1 $(cat /run/udhcpc.eth0.pid)")
        return inet(world, c) == [second]

    await asyncio.to_thread(wait_for, renewed, 30, 1.0)
    leases = api.get(f"/1.0/networks/{world.net}/leases").json()["metadata"]
    mine = [(entry["address"], entry["type"]) for entry in leases if entry["hwaddr"] == mac]
    assert (second, "static") in mine and all(a != first for a, _ in mine), mine
    await asyncio.to_thread(world.remove, c)


def test_static_ipv6_lease_over_dhcpv6(networks, netns, prefix):  # noqa: F811
    """An ``ipv6.address`` static lease on a stateful DHCPv6 bridge: dnsmasq matches the
    client by the MAC inside its DUID-LL and hands exactly that address."""
    net = networks(f"{prefix}8", {"ipv4.address": "none", "ipv6.address": "auto",
                                  "ipv6.dhcp.stateful": "true", "ipv6.routing": "false"})
    config = net.create()
    gw6 = IPv6Interface(config["ipv6.address"])
    ns, _host = netns("s", net.name)
    bridge_sh("ip", "-n", ns, "link", "set", "eth0", "up")
    mac = ns_mac(ns)
    want = str(gw6.network.network_address + 0x99)
    v4, v6 = leases.check_addresses(net.name, config, "", want)
    assert leases.write(net.state_dir, mac, f"{prefix}-s6", v4, v6, "default/s6")
    r = bridge_sh("ip", "netns", "exec", ns, sys.executable, str(DHCP6_CLIENT), "eth0", mac,
                  f"{prefix}-s6", timeout=60)
    assert IPv6Address(r.stdout.strip()) == IPv6Address(want)
    assert {"hostname": f"{prefix}-s6", "hwaddr": mac, "address": want, "type": "static",
            "location": "none"} in net.leases()


def leases_csv(stack, net: str) -> list[list[str]]:
    out = lxc(stack, "network", "list-leases", net, "--format", "csv").stdout
    return [line.split(",") for line in out.splitlines()]


def test_static_address_held_dynamically_by_another(world, api, stack):
    """c1 holds .X as a dynamic lease; c2 asks for .X statically. While c1 runs: a 409
    naming c1, nothing written for c2. Once c1 is stopped (its lease is still in
    dnsmasq's file): c1's lease is released and c2 gets exactly .X; c1 comes back with
    another address."""
    state_dir = stack.dir / "networks" / world.net
    c1, c2 = world.name("dyn1"), world.name("dyn2")
    lxc(stack, "launch", world.image, c1, "-p", world.profile)
    wait_for(lambda: inet(world, c1), 30)
    [held] = inet(world, c1)
    mac1 = world.get(c1)["config"]["volatile.eth0.hwaddr"]
    assert [mac1, held, "DYNAMIC"] in [r[1:4] for r in leases_csv(stack, world.net)]

    lxc(stack, "init", world.image, c2, "-p", world.profile)
    lxc(stack, "config", "device", "override", c2, "eth0", f"ipv4.address={held}")
    r = lxc(stack, "start", c2, check=False)
    assert r.returncode != 0, r.stdout
    assert f"{held} is in use" in r.stderr and repr(c1) in r.stderr, r.stderr
    assert world.live(c2)["status"] == "Stopped"
    mac2 = world.get(c2)["config"]["volatile.eth0.hwaddr"]
    assert not [e for e in dnsmasq.read_hosts(state_dir) if e["hwaddr"] == mac2]
    # The same through the REST API: a 409 with the reason.
    r = api.put(f"/1.0/instances/{c2}/state", json={"action": "start"})
    op = world.wait(r, ok=False)
    assert op["status"] == "Failure" and "is in use" in op["err"], op

    lxc(stack, "stop", "--force", c1)
    assert (mac1, held) in {(lease["hwaddr"], lease["address"])
                            for lease in dnsmasq.read_leases(state_dir)}  # still held
    pid = dnsmasq.running_pid(state_dir)
    lxc(stack, "start", c2)
    wait_for(lambda: inet(world, c2) == [held], 30)
    rows = leases_csv(stack, world.net)
    assert [mac2, held, "STATIC"] in [r[1:4] for r in rows], rows
    assert not [r for r in rows if r[1] == mac1], rows
    assert dnsmasq.running_pid(state_dir) == pid  # released, never restarted

    lxc(stack, "start", c1)
    wait_for(lambda: len(inet(world, c1)) == 1, 30)
    assert inet(world, c1) != [held]
    world.remove(c1)
    world.remove(c2)


def test_deleted_instance_lease_is_released_live(world, api, stack):
    """A network with a one-address DHCP range: c1 takes the address; the delete releases
    it in the running dnsmasq (same PID, the lease gone from its file and from its memory),
    so c2, launched next, gets that very address."""
    net = f"{world.prefix}r"
    r = api.post("/1.0/networks", json={"name": net, "config": {
        "ipv4.address": "auto", "ipv4.nat": "false", "ipv6.address": "none"}})
    assert r.status_code == 201, r.text
    try:
        gw = subnet(api, net)
        only = str(gw.network.network_address + 50)
        lxc(stack, "network", "set", net, "ipv4.dhcp.ranges", f"{only}-{only}")
        state_dir = stack.dir / "networks" / net
        c1, c2 = world.name("rel1"), world.name("rel2")
        for c in (c1, c2):
            lxc(stack, "init", world.image, c, "-p", world.profile)
            lxc(stack, "config", "device", "override", c, "eth0", f"network={net}")
        lxc(stack, "start", c1)
        wait_for(lambda: inet(world, c1) == [only], 30)
        mac1 = world.get(c1)["config"]["volatile.eth0.hwaddr"]
        assert [lease["hwaddr"] for lease in dnsmasq.read_leases(state_dir)] == [mac1]
        pid = dnsmasq.running_pid(state_dir)
        lxc(stack, "stop", "--force", c1)
        lxc(stack, "delete", c1)
        # Gone at once from the file and from list-leases, dnsmasq never restarted.
        assert dnsmasq.read_leases(state_dir) == []
        assert not leases_csv(stack, net)
        assert dnsmasq.running_pid(state_dir) == pid
        # ... and from dnsmasq's memory: the only address goes to the next guest.
        lxc(stack, "start", c2)
        wait_for(lambda: inet(world, c2) == [only], 30)
        mac2 = world.get(c2)["config"]["volatile.eth0.hwaddr"]
        assert [(lease["hwaddr"], lease["address"])
                for lease in dnsmasq.read_leases(state_dir)] == [(mac2, only)]
        assert dnsmasq.running_pid(state_dir) == pid
        world.remove(c2)
    finally:
        for c in list(world.instances):
            if c.endswith(("-rel1", "-rel2")):
                world.remove(c)
        api.delete(f"/1.0/networks/{net}")


def test_dhcpv6_lease_released_live(networks, netns, prefix):  # noqa: F811
    """A dynamic DHCPv6 lease goes with a DHCPv6 Release on the client's behalf
    (dhcp_release6: the client's DUID and IAID, the server's DUID from the lease file):
    gone from dnsmasq's file, dnsmasq never restarted."""
    net = networks(f"{prefix}9", {"ipv4.address": "none", "ipv6.address": "auto",
                                  "ipv6.dhcp.stateful": "true", "ipv6.routing": "false"})
    net.create()
    ns, _host = netns("r", net.name)
    bridge_sh("ip", "-n", ns, "link", "set", "eth0", "up")
    mac = ns_mac(ns)
    r = bridge_sh("ip", "netns", "exec", ns, sys.executable, str(DHCP6_CLIENT), "eth0", mac,
                  f"{prefix}-r6", timeout=60)
    leased = str(IPv6Address(r.stdout.strip()))
    assert [(lease["hwaddr"], lease["address"])
            for lease in dnsmasq.read_leases(net.state_dir)] == [(mac, leased)]
    pid = dnsmasq.running_pid(net.state_dir)
    assert net.release_leases({mac}) == 1
    assert dnsmasq.read_leases(net.state_dir) == []
    assert dnsmasq.running_pid(net.state_dir) == pid


def test_release_falls_back_to_a_restart(networks, netns, prefix, corral_dir,  # noqa: F811
                                         monkeypatch):
    """Two guests' leases: one released live (the other's lease and dnsmasq stay); then,
    dhcp_release missing (dnsmasq-utils not installed), the other's goes by a restart."""
    net = networks(f"{prefix}f", {"ipv4.address": "auto", "ipv4.nat": "false",
                                  "ipv6.address": "none"})
    net.create()
    script = corral_dir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    macs = []
    for tag in ("a", "b"):
        ns, _host = netns(tag, net.name)
        udhcpc(ns, f"{prefix}-{tag}", script)
        macs.append(ns_mac(ns))
    assert sorted(lease["hwaddr"] for lease in dnsmasq.read_leases(net.state_dir)) == \
        sorted(macs)
    pid = dnsmasq.running_pid(net.state_dir)
    assert net.release_leases({macs[0]}) == 1
    assert [lease["hwaddr"] for lease in dnsmasq.read_leases(net.state_dir)] == [macs[1]]
    assert dnsmasq.running_pid(net.state_dir) == pid
    monkeypatch.setattr(dhcp_release, "DHCP_RELEASE", "corral-no-such-dhcp_release")
    assert net.release_leases({macs[1]}) == 1
    assert dnsmasq.read_leases(net.state_dir) == []
    assert dnsmasq.running_pid(net.state_dir) not in (None, pid)
