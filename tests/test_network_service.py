"""The network service through the real stack: HTTP, the corral CLI, the stock lxc client,
the NIC verbs on the bus, and reconcile after a restart.

Every network is named ``<uid>`` + a suffix (at most 10 chars: it is a bridge name) and is
removed by a finalizer, through the API and then by hand (dnsmasq by its verified PID, the
nft table, the bridge) if the API could not.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import threading
from ipaddress import IPv4Interface, IPv6Interface

import pytest
from pyroute2 import IPRoute

from services.network.drivers import dnsmasq, nft
from services.network.nic import ifb_name
from shared import codec, subjects
from shared.bus import Bus
from shared.errors import CorralError
from shared.messages.network import (
    NetworkUsersRequest,
    NicConfigReply,
    NicConfigRequest,
    NicLimitsRequest,
)
from shared.models import Reply

from .stack import BIN, wait_for
from .test_network_bridge import del_link, link_exists

pytestmark = pytest.mark.root


def add_veth(name: str, peer: str) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer)


def state_dir(stack, name: str):
    return stack.dir / "networks" / name


def dns_answers(ip: str) -> bool:
    """One DNS query to dnsmasq on the bridge's own address (never leaves the host)."""
    qname = b"".join(bytes([len(p)]) + p for p in b"probe.corral".split(b".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query, (ip, 53))
        data, _ = s.recvfrom(512)
    return data[:2] == b"\x42\x42"


def api_ready(stack) -> bool:
    import httpx
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.socket))) as c:
        return c.get("http://corral/1.0/networks").status_code == 200


class UsersStandIn(threading.Thread):
    """Answers ``instance.network_users`` with [] from a thread of its own (the tests'
    event loop is blocked while a sync HTTP call waits on the service that asks)."""

    def __init__(self, config) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop, self.stopped = asyncio.get_running_loop(), asyncio.Event()
        bus = await Bus(self.config, "tests-standin").connect()

        async def answer(msg):
            await msg.respond(codec.encode(Reply(metadata=[])))

        await bus.subscribe(subjects.service("instance", "network_users"), answer)
        await bus.nc.flush()
        self.ready.set()
        await self.stopped.wait()
        await bus.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set)
        self.join(10)


@pytest.fixture(scope="module")
async def users_standin(stack, bus, bus_config):
    """``instance.network_users`` answers [] while the instance service lacks the verb.

    Once the instance service implements it, nothing is installed and the real one answers.
    Also waits for the network service: the stack is "ready" once instances answer.
    """
    wait_for(lambda: api_ready(stack), 30, what="the network service")
    try:
        await bus.request("instance", "network_users", NetworkUsersRequest(name="lo"),
                          timeout=1)
        yield None
        return
    except CorralError as exc:
        if exc.code != 503:
            raise
    standin = UsersStandIn(bus_config)
    standin.start()
    assert standin.ready.wait(10)
    yield standin
    standin.stop()


@pytest.fixture
def nets(stack, api, users_standin):
    """Names of networks a test makes; all removed at the end, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        api.delete(f"/1.0/networks/{name}")
        pid = dnsmasq.running_pid(state_dir(stack, name))
        if pid:
            os.kill(pid, 9)
        subprocess.run(["nft", "delete", "table", "inet", nft.table_name(name)],
                       capture_output=True)
        del_link(name)


@pytest.fixture
def profiles(api):
    made: list[str] = []
    yield made
    for name in made:
        api.delete(f"/1.0/profiles/{name}")


def create(api, nets, name: str, **config: str):
    nets.append(name)
    r = api.post("/1.0/networks", json={"name": name, "type": "bridge",
                                        "config": {"ipv4.address": "auto", **config}})
    assert r.status_code == 201, r.text
    return api.get(f"/1.0/networks/{name}").json()["metadata"]


def wait_network_service(api, name: str) -> None:
    wait_for(lambda: api.get(f"/1.0/networks/{name}").status_code == 200, 30,
             what="the network service after a restart")


# -- HTTP ---------------------------------------------------------------------------------

def test_server_info_lists_network_extensions(api, users_standin):
    exts = api.get("/1.0").json()["metadata"]["api_extensions"]
    assert {"network", "network_leases", "network_state"} <= set(exts)


def test_http_create_list_show_state_leases_delete(stack, api, uid, nets):
    name = f"{uid}a"
    r = api.post("/1.0/networks", json={"name": name, "config": {"ipv4.address": "auto"},
                                        "description": "test net"})
    nets.append(name)
    assert r.status_code == 201 and r.json()["type"] == "sync", r.text
    assert r.headers["Location"] == f"/1.0/networks/{name}"

    r = api.get(f"/1.0/networks/{name}")
    net = r.json()["metadata"]
    assert r.headers.get("ETag"), (r.headers, r.text)
    assert {k: net[k] for k in ("name", "type", "managed", "status", "description",
                                "locations", "used_by")} == {
        "name": name, "type": "bridge", "managed": True, "status": "Created",
        "description": "test net", "locations": ["none"], "used_by": []}
    gw = IPv4Interface(net["config"]["ipv4.address"])  # "auto" was resolved
    assert net["config"]["ipv4.nat"] == "true"
    assert link_exists(name) and dnsmasq.running_pid(state_dir(stack, name))

    urls = api.get("/1.0/networks").json()["metadata"]
    assert f"/1.0/networks/{name}" in urls and "/1.0/networks/lo" in urls
    full = {n["name"]: n for n in api.get("/1.0/networks?recursion=1").json()["metadata"]}
    assert full[name]["managed"] is True
    assert full["lo"]["managed"] is False and full["lo"]["type"] == "loopback"
    assert not any(n.startswith("veth") for n in full)

    state = api.get(f"/1.0/networks/{name}/state").json()["metadata"]
    assert {"family": "inet", "address": str(gw.ip), "netmask": str(gw.network.prefixlen),
            "scope": "global"} in state["addresses"]
    assert state["state"] == "up" and state["bridge"] is not None
    assert api.get("/1.0/networks/lo/state").json()["metadata"]["type"] == "loopback"
    assert api.get(f"/1.0/networks/{name}/leases").json()["metadata"] == []

    r = api.patch(f"/1.0/networks/{name}", json={"description": "changed"},
                  headers={"If-Match": '"stale"'})
    assert r.status_code == 412
    r = api.patch(f"/1.0/networks/{name}", json={"description": "changed",
                                                 "config": {"user.k": "v"}})
    assert r.status_code == 200, r.text
    net2 = api.get(f"/1.0/networks/{name}").json()["metadata"]
    assert net2["description"] == "changed" and net2["config"]["user.k"] == "v"
    assert net2["config"]["ipv4.address"] == str(gw)  # the subnet survives an update

    r = api.delete(f"/1.0/networks/{name}")
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/networks/{name}").status_code == 404
    assert not link_exists(name) and not state_dir(stack, name).exists()
    assert subprocess.run(["nft", "list", "table", "inet", nft.table_name(name)],
                          capture_output=True).returncode != 0


@pytest.mark.parametrize("body, words", [
    ({"name": "x" * 16}, "at most 15"),
    ({"name": "bad name"}, "only letters"),
    ({"name": "{uid}b", "config": {"ipv4.address": "300.1.2.1/24"}}, "ipv4.address"),
    ({"name": "{uid}b", "config": {"no.such.key": "1"}}, "no.such.key"),
    ({"name": "{uid}b", "type": "ovn"}, "Unsupported network type"),
    ({"name": "{uid}b", "config": {"ipv4.nat": "maybe"}}, "boolean"),
])
def test_bad_create_is_400_and_leaves_nothing(stack, api, uid, nets, body, words):
    body = {**body, "name": body["name"].format(uid=uid)}
    nets.append(body["name"])
    r = api.post("/1.0/networks", json=body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert api.get(f"/1.0/networks/{body['name']}").status_code == 404
    assert not link_exists(body["name"]) and not state_dir(stack, body["name"]).exists()


def test_duplicate_is_409(api, uid, nets):
    name = f"{uid}d"
    create(api, nets, name)
    r = api.post("/1.0/networks", json={"name": name})
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    r = api.post("/1.0/networks", json={"name": "lo"})  # a host interface
    assert r.status_code == 409, r.text


def test_delete_refused_while_a_profile_uses_it(api, uid, nets, profiles):
    name = f"{uid}p"
    create(api, nets, name)
    profiles.append(uid)
    r = api.post("/1.0/profiles", json={"name": uid, "devices": {
        "eth0": {"type": "nic", "network": name, "name": "eth0"}}})
    assert r.status_code == 200, r.text
    net = api.get(f"/1.0/networks/{name}").json()["metadata"]
    assert net["used_by"] == [f"/1.0/profiles/{uid}"]
    r = api.delete(f"/1.0/networks/{name}")
    assert r.status_code == 409 and f"/1.0/profiles/{uid}" in r.json()["error"]
    r = api.post(f"/1.0/networks/{name}", json={"name": f"{uid}q"})
    assert r.status_code == 409
    assert link_exists(name)
    assert api.delete(f"/1.0/profiles/{uid}").status_code == 200
    assert api.delete(f"/1.0/networks/{name}").status_code == 200
    assert not link_exists(name)


def test_delete_is_503_when_usage_cannot_be_checked(stack, api, uid, nets):
    name = f"{uid}u"
    create(api, nets, name)
    stack.stop("instance")
    try:
        r = api.delete(f"/1.0/networks/{name}")
        assert r.status_code == 503, r.text
        assert f"cannot check whether network {name} is in use" in r.json()["error"]
        assert link_exists(name)
        assert api.get(f"/1.0/networks/{name}").status_code == 200
    finally:
        stack.start("instance")
        wait_for(lambda: api.get("/1.0/profiles").status_code == 200, 30,
                 what="the instance service")


def test_rename_moves_bridge_and_dnsmasq(stack, api, uid, nets):
    old, new = f"{uid}r", f"{uid}s"
    net = create(api, nets, old)
    nets.append(new)
    r = api.post(f"/1.0/networks/{old}", json={"name": new})
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/networks/{old}").status_code == 404
    moved = api.get(f"/1.0/networks/{new}").json()["metadata"]
    assert moved["config"] == net["config"]
    assert not link_exists(old) and link_exists(new)
    assert dnsmasq.running_pid(state_dir(stack, new))
    assert not state_dir(stack, old).exists()


async def test_lifecycle_events(api, bus, uid, nets):
    name, seen = f"{uid}l", []

    async def on_event(msg):
        seen.append(json.loads(msg.data)["metadata"])

    sub = await bus.subscribe(subjects.event("lifecycle", "default", "network"), on_event)
    try:
        await asyncio.to_thread(create, api, nets, name)
        r = await asyncio.to_thread(api.delete, f"/1.0/networks/{name}")
        assert r.status_code == 200, r.text
        for _ in range(100):
            if len([e for e in seen if e["source"] == f"/1.0/networks/{name}"]) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()
    assert [e["action"] for e in seen if e["source"] == f"/1.0/networks/{name}"] == [
        "network-created", "network-deleted"]


# -- NIC verbs on the bus ------------------------------------------------------------------

async def test_nic_config_over_the_bus(api, bus, bus_config, uid, nets):
    name = f"{uid}n"
    create(api, nets, name)
    node = bus_config.node
    req = NicConfigRequest(instance="c1", index=1, device={"type": "nic", "network": name})
    reply = NicConfigReply.model_validate(
        (await bus.request("network", "nic_config", req, node=node)).metadata)
    assert reply.network == name and reply.bridge == name and reply.parent == name
    assert reply.host_name.startswith("veth") and reply.hwaddr.startswith("00:16:3e:")
    assert (reply.name, reply.nictype, reply.mtu) == ("eth1", "bridged", None)
    # neutral: no driver's syntax in the answer (each instance driver renders its own)
    assert "lxc" not in reply.model_dump() and "lxc." not in reply.model_dump_json()

    again = NicConfigRequest(instance="c1", index=0, device={"type": "nic", "network": name,
                                                             "name": "eth0"},
                             host_name=reply.host_name, hwaddr=reply.hwaddr)
    reply2 = NicConfigReply.model_validate(
        (await bus.request("network", "nic_config", again, node=node)).metadata)
    assert (reply2.host_name, reply2.hwaddr) == (reply.host_name, reply.hwaddr)

    with pytest.raises(CorralError) as err:
        await bus.request("network", "nic_config", NicConfigRequest(
            instance="c1", index=0, device={"type": "nic", "network": f"{uid}zz"}), node=node)
    assert err.value.code == 404
    with pytest.raises(CorralError) as err:
        await bus.request("network", "nic_config", NicConfigRequest(
            instance="c1", index=0, device={"type": "nic", "network": name, "bogus": "1"}),
            node=node)
    assert err.value.code == 400
    for device, code in (({"nictype": "bridged", "parent": f"{uid}zz"}, 404),
                         ({"nictype": "bridged", "parent": "lo"}, 400)):
        with pytest.raises(CorralError) as err:
            await bus.request("network", "nic_config", NicConfigRequest(
                instance="c1", index=0, device={"type": "nic", **device}), node=node)
        assert err.value.code == code, err.value


@pytest.fixture
def veth(uid):
    """A veth pair made by hand (stands in for a running NIC's host end)."""
    host, peer = f"{uid}v", f"{uid}w"
    with IPRoute() as ipr:
        ipr.link("add", ifname=host, kind="veth", peer=peer)
        ipr.link("set", index=ipr.link_lookup(ifname=host)[0], state="up")
    yield host
    del_link(host)
    del_link(ifb_name(host))


async def test_nic_limits_over_the_bus(bus, bus_config, veth):
    node = bus_config.node

    def qdiscs() -> str:
        return subprocess.run(["tc", "qdisc", "show", "dev", veth], capture_output=True,
                              text=True).stdout

    req = NicLimitsRequest(host_name=veth, device={"type": "nic", "limits.max": "10Mbit"})
    await bus.request("network", "nic_limits", req, node=node)
    assert "htb 1: root" in qdiscs() and "ingress ffff:" in qdiscs()
    await bus.request("network", "nic_limits", NicLimitsRequest(host_name=veth), node=node)
    assert "htb" not in qdiscs() and "ingress" not in qdiscs()
    with pytest.raises(CorralError) as err:
        await bus.request("network", "nic_limits", NicLimitsRequest(
            host_name=veth, device={"limits.ingress": "fast"}), node=node)
    assert err.value.code == 400


# -- reconcile ----------------------------------------------------------------------------

def test_restart_keeps_network_and_dnsmasq(stack, api, uid, nets):
    name = f"{uid}k"
    net = create(api, nets, name)
    gw = IPv4Interface(net["config"]["ipv4.address"])
    pid = dnsmasq.running_pid(state_dir(stack, name))
    assert pid and dns_answers(str(gw.ip))
    stack.stop("network")
    stack.start("network")
    wait_network_service(api, name)
    assert api.get(f"/1.0/networks/{name}").json()["metadata"]["status"] == "Created"
    assert dnsmasq.running_pid(state_dir(stack, name)) == pid
    assert dns_answers(str(gw.ip))


def test_bridge_deleted_by_hand_is_recreated_on_restart(stack, api, uid, nets):
    name = f"{uid}g"
    net = create(api, nets, name)
    gw = IPv4Interface(net["config"]["ipv4.address"])
    del_link(name)
    stack.stop("network")
    stack.start("network")
    wait_network_service(api, name)
    assert link_exists(name)
    state = api.get(f"/1.0/networks/{name}/state").json()["metadata"]
    assert str(gw.ip) in [a["address"] for a in state["addresses"]]
    assert api.get(f"/1.0/networks/{name}").json()["metadata"]["status"] == "Created"
    assert dns_answers(str(gw.ip))


async def test_start_failure_marks_errored_and_service_still_runs(stack, api, bus, bus_config,
                                                                 uid, nets):
    """A non-bridge interface squatting the name makes start fail: Errored, with why."""
    name = f"{uid}e"
    create(api, nets, name)
    await asyncio.to_thread(del_link, name)  # pyroute2 wants no running loop in its thread
    await asyncio.to_thread(add_veth, name, f"{uid}ep")
    try:
        stack.stop("network")
        stack.start("network")
        wait_network_service(api, name)
        net = api.get(f"/1.0/networks/{name}").json()["metadata"]
        assert net["status"] == "Errored" and "not a bridge" in net["status_reason"]
        assert api.get("/1.0/networks?recursion=1").status_code == 200
    finally:
        await asyncio.to_thread(del_link, name)
    r = api.post("/1.0/networks", json={"name": f"{uid}f"})  # the service still works
    nets.append(f"{uid}f")
    assert r.status_code == 201, r.text
    # The next NIC that needs the network starts it again, and it is Created again.
    req = NicConfigRequest(instance="c1", index=0, device={"type": "nic", "network": name})
    await bus.request("network", "nic_config", req, node=bus_config.node, timeout=30)
    assert await asyncio.to_thread(link_exists, name)
    assert api.get(f"/1.0/networks/{name}").json()["metadata"]["status"] == "Created"


# -- the corral CLI and the stock lxc client ------------------------------------------------

def run(stack, *cmd: str):
    env = {**stack.env, "LXD_DIR": str(stack.dir)}
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=60)


def test_corral_cli(stack, api, uid, nets):
    name = f"{uid}c"
    nets.append(name)
    corral = str(BIN / "corral")
    r = run(stack, corral, "network", "create", name, "ipv4.address=auto", "user.a=b")
    assert r.returncode == 0, r.stderr
    r = run(stack, corral, "network", "list", "--format", "csv")
    assert r.returncode == 0 and any(line.startswith(f"{name},bridge,YES,10.")
                                     for line in r.stdout.splitlines()), r.stdout
    r = run(stack, corral, "network", "list")
    assert r.returncode == 0 and name in r.stdout
    r = run(stack, corral, "network", "show", name)
    assert r.returncode == 0 and "user.a: b" in r.stdout
    r = run(stack, corral, "network", "info", name)
    assert r.returncode == 0 and "addresses:" in r.stdout
    r = run(stack, corral, "network", "list-leases", name, "--format", "json")
    assert r.returncode == 0 and r.stdout.strip() == "[]"
    r = run(stack, corral, "network", "create", name)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run(stack, corral, "network", "delete", name)
    assert r.returncode == 0, r.stderr
    assert not link_exists(name)
    r = run(stack, corral, "network", "show", name)
    assert r.returncode == 1 and r.stderr.startswith("Error:")


def test_stock_lxc_client(stack, api, uid, nets):
    name = f"{uid}x"
    nets.append(name)
    r = run(stack, "lxc", "network", "create", name, "ipv4.address=auto")
    assert r.returncode == 0, r.stderr
    r = run(stack, "lxc", "network", "list", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith(f"{name},bridge,YES,") for line in r.stdout.splitlines())
    r = run(stack, "lxc", "network", "show", name)
    assert r.returncode == 0 and "ipv4.address: 10." in r.stdout, r.stderr
    r = run(stack, "lxc", "network", "info", name)
    assert r.returncode == 0 and "State: up" in r.stdout, r.stderr
    r = run(stack, "lxc", "network", "list-leases", name)
    assert r.returncode == 0, r.stderr
    r = run(stack, "lxc", "network", "delete", name)
    assert r.returncode == 0, r.stderr
    assert not link_exists(name)


# -- IPv6 and LXD's full key set ----------------------------------------------------------------

def test_ipv6_keys_lxd_accepts_are_accepted(stack, api, uid, nets):
    """``ipv6.nat`` and friends were refused before; LXD 5.0 accepts them."""
    net = create(api, nets, f"{uid}6", **{
        "ipv4.nat": "false", "ipv6.address": "auto", "ipv6.nat": "true",
        "ipv6.routing": "false", "ipv6.dhcp.expiry": "2h", "ipv6.firewall": "true",
        "ipv4.nat.order": "after", "dns.search": "lab.example"})
    gw6 = IPv6Interface(net["config"]["ipv6.address"])
    assert gw6.network.prefixlen == 64 and str(gw6.ip).startswith("fd")
    assert net["config"]["ipv6.nat"] == "true"
    state = api.get(f"/1.0/networks/{net['name']}/state").json()["metadata"]
    assert {"family": "inet6", "address": str(gw6.ip), "netmask": "64",
            "scope": "global"} in state["addresses"]
    rules = subprocess.run(["nft", "list", "table", "inet", nft.table_name(net["name"])],
                           capture_output=True, text=True).stdout
    assert f"ip6 saddr {gw6.network}" in rules and "masquerade" in rules
    r = api.patch(f"/1.0/networks/{net['name']}", json={"config": {"ipv6.dhcp.stateful": "true"}})
    assert r.status_code == 200, r.text
    argv = open(f"/proc/{dnsmasq.running_pid(state_dir(stack, net['name']))}/cmdline").read()
    assert f"{gw6.network.network_address + 2}," in argv  # stateful range now


@pytest.mark.parametrize("key, value", [
    ("bridge.driver", "openvswitch"), ("fan.type", "vxlan"), ("tunnel.t1.protocol", "vxlan"),
    ("ipv4.ovn.ranges", "10.1.2.10-10.1.2.20"), ("dns.zone.forward", "z.example"),
    ("bgp.peers.p1.asn", "65000"), ("maas.subnet.ipv6", "m6"),
])
def test_keys_not_supported_yet_are_400_naming_them(stack, api, uid, nets, key, value):
    name = f"{uid}n"
    nets.append(name)
    r = api.post("/1.0/networks", json={"name": name, "config": {key: value}})
    assert r.status_code == 400, r.text
    assert key in r.json()["error"] and "not supported by Corral yet" in r.json()["error"]
    assert not link_exists(name)


def test_patch_with_key_not_supported_yet_is_400_and_changes_nothing(api, uid, nets):
    net = create(api, nets, f"{uid}q")
    r = api.patch(f"/1.0/networks/{net['name']}", json={"config": {"fan.type": "ipip"}})
    assert r.status_code == 400 and "'fan.type'" in r.json()["error"], r.text
    assert api.get(f"/1.0/networks/{net['name']}").json()["metadata"]["config"] == net["config"]


def test_stock_lxc_client_ipv6_network(stack, api, uid, nets):
    name = f"{uid}l"
    nets.append(name)
    r = run(stack, "lxc", "network", "create", name, "ipv6.address=auto", "ipv6.nat=true",
            "ipv6.routing=false")
    assert r.returncode == 0, r.stderr
    r = run(stack, "lxc", "network", "show", name)
    assert r.returncode == 0 and "ipv6.address: fd" in r.stdout and \
        'ipv6.nat: "true"' in r.stdout, r.stdout
    r = run(stack, "lxc", "network", "list", "--format", "csv")
    row = next(line for line in r.stdout.splitlines() if line.startswith(f"{name},"))
    assert "/64" in row and "fd" in row, row  # the IPV6 column
    r = run(stack, "lxc", "network", "set", name, "tunnel.t1.protocol", "gre")
    assert r.returncode != 0 and "tunnel.t1.protocol" in r.stderr
