"""Containers on IPv6 bridges through the whole stack: a ULA address from SLAAC in the
instance state and in the stock client's ``lxc list`` IPV6 column; a stateful DHCPv6 lease
in ``/1.0/networks/<n>/leases``.

Every network here has ``ipv6.routing=false``: instances learn the prefix from router
advertisements but get no default route through the bridge, so nothing can leave the
machine (the NAT rule exists and is checked, no traffic uses it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from ipaddress import IPv6Address, IPv6Interface
from pathlib import Path

import pytest

from .stack import wait_for
from .world import make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)

DHCP6_CLIENT = Path(__file__).with_name("dhcp6_client.py")


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


@pytest.fixture
def v6net(world, api):
    """Factory: an IPv6 bridge and a profile with eth0 on it; removed at the end (after the
    instances, which the world's own cleanup would remove later)."""
    made: list[tuple[str, str]] = []

    def make(tag: str, **config: str) -> tuple[dict, str]:
        net, profile = f"{world.prefix}{tag}", f"{world.prefix}{tag}p"
        made.append((net, profile))
        r = api.post("/1.0/networks", json={"name": net, "config": {
            "ipv4.address": "auto", "ipv4.nat": "false", "ipv6.address": "auto",
            "ipv6.nat": "true", "ipv6.routing": "false", **config}})
        assert r.status_code == 201, r.text
        r = api.post("/1.0/profiles", json={"name": profile, "devices": {
            "eth0": {"type": "nic", "network": net, "name": "eth0"}}})
        assert r.status_code in (200, 201), r.text
        return api.get(f"/1.0/networks/{net}").json()["metadata"], profile

    yield make
    for net, profile in made:
        for name in list(world.instances):
            world.remove(name)
        api.delete(f"/1.0/profiles/{profile}")
        api.delete(f"/1.0/networks/{net}")


def lxc(stack, *args: str) -> str:
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def eth0_inet6(world, name: str) -> list[dict]:
    state = world.live(name)
    eth0 = ((state.get("network") or {}).get("eth0") or {})
    return [a for a in eth0.get("addresses", []) if a["family"] == "inet6"]


def test_container_gets_slaac_ula_in_state_and_lxc_list(world, stack, v6net):
    net, profile = v6net("s")
    gw6 = IPv6Interface(net["config"]["ipv6.address"])
    name = world.name("v6")
    lxc(stack, "launch", world.image, name, "-p", world.profile, "-p", profile)

    def global_v6() -> list[dict]:
        return [a for a in eth0_inet6(world, name) if a["scope"] == "global"]

    wait_for(global_v6, 30, what="a SLAAC address in the instance state")
    addr = IPv6Address(global_v6()[0]["address"])
    assert addr in gw6.network and global_v6()[0]["netmask"] == "64"
    assert any(a["scope"] == "link" and a["address"].startswith("fe80:")
               for a in eth0_inet6(world, name))  # link-local too, as LXD lists it
    rows = json.loads(lxc(stack, "list", name, "--format", "json"))
    assert rows and rows[0]["state"]["network"]["eth0"]["addresses"]
    shown = lxc(stack, "list", name, "--format", "csv", "-c", "n6").strip()
    assert shown.startswith(f"{name},") and f"{addr} (eth0)" in shown, shown
    routes = subprocess.run(["nsenter", "-t", str(world.live(name)["pid"]), "-n",
                             "ip", "-6", "route"], capture_output=True, text=True).stdout
    assert "default" not in routes, routes  # ipv6.routing=false: no way off the host


def test_container_stateful_dhcpv6_lease(world, stack, api, v6net):
    net, profile = v6net("d", **{"ipv6.dhcp.stateful": "true"})
    gw6 = IPv6Interface(net["config"]["ipv6.address"])
    name = world.create("d6", start=True, profiles=[world.profile, profile])
    mac = world.get(name)["config"]["volatile.eth0.hwaddr"]
    pid = world.live(name)["pid"]
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, str(DHCP6_CLIENT),
                        "eth0", mac, name, "--apply"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    leased = r.stdout.strip()
    assert IPv6Address(leased) in gw6.network
    leases = api.get(f"/1.0/networks/{net['name']}/leases").json()["metadata"]
    assert {"hostname": name, "hwaddr": mac, "address": leased, "type": "dynamic",
            "location": "none"} in leases, leases
    assert any(a["address"] == leased for a in eth0_inet6(world, name))
    out = lxc(stack, "network", "list-leases", net["name"], "--format", "csv")
    assert f"{name},{mac},{leased},DYNAMIC" in out, out
