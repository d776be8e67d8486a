"""Devices changed on RUNNING containers: NIC hot-plug and unplug, proxy devices (their
forwarders outlive an instance service restart), unix-char/unix-block nodes, refusals.

Through the stock ``lxc`` client (and the REST API where a status code matters); every
check looks inside the container, on the host, or through the proxied port.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from pyroute2 import IPRoute

from .stack import BIN, wait_for
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)

DHCP = "udhcpc -i {dev} -q -n -t 5 -T 2 -s /usr/share/udhcpc/default.script"
# What a fresh DHCP request on eth0 gets. The image's background udhcpc goes first: it
# still holds the old lease and may put that address back at any moment (a race the
# suite lost under load).
FRESH_LEASE = ("kill $(cat /run/udhcpc.eth0.pid) 2>/dev/null; sleep 0.2; "
               "ip -4 addr flush dev eth0; " + DHCP.format(dev="eth0"))


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


@pytest.fixture(scope="module")
def pair(world):
    """Two running containers on the world's bridge (eth0 each)."""
    return world.create("a", start=True), world.create("b", start=True)


def sh(stack, name: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    return lxc(stack, "exec", name, "--", "sh", "-c", script, check=check)


def corral(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=120)


def unleased(api, net: str, iface, start: int) -> str:
    """An address of the network from ``start`` up that no NIC holds now: dnsmasq will not
    give a static address another MAC leases dynamically (it hands out another one), and
    the world's other containers took addresses anywhere in the range."""
    taken = {le["address"] for le in api.get(f"/1.0/networks/{net}/leases").json()["metadata"]}
    for n in range(start, 250):
        address = str(iface.network.network_address + n)
        if address not in taken:
            return address
    raise AssertionError(f"no free address in {iface.network}")


def inet(stack, name: str, dev: str) -> str | None:
    out = sh(stack, name, f"ip -4 -o addr show dev {dev}", check=False).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None


def host_link(ifname: str) -> dict | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        master = link.get_attr("IFLA_MASTER")
        return {"master": ipr.get_links(master)[0].get_attr("IFLA_IFNAME") if master else None}


def bridge_ports(bridge: str) -> set[str]:
    """The interfaces on the world's bridge (only this module's containers use it), and
    any temporary peer name of a hot-plug (none may stay)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=bridge)[0]
        return {lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()
                if lk.get_attr("IFLA_MASTER") == idx or
                lk.get_attr("IFLA_IFNAME", "").startswith("hpveth")}


def record(api, name: str) -> dict:
    return api.get(f"/1.0/instances/{name}").json()["metadata"]


def patch_devices(api, name: str, devices: dict) -> httpx.Response:
    return api.patch(f"/1.0/instances/{name}", json={"devices": devices})


# -- NICs --------------------------------------------------------------------------------------

def test_nic_hotplug_gets_a_lease_answers_ping_and_unplugs(world, pair, stack, api):
    a, b = pair
    lxc(stack, "config", "device", "add", a, "eth1", "nic", f"network={world.net}",
        "name=eth1")
    cfg = record(api, a)["config"]
    veth = cfg["volatile.eth1.host_name"]
    assert cfg["volatile.eth1.hwaddr"].startswith("00:16:3e:")
    assert host_link(veth) == {"master": world.net}  # host side on the bridge
    link = sh(stack, a, "ip -o link show eth1").stdout
    assert cfg["volatile.eth1.hwaddr"] in link and "UP" in link
    sh(stack, a, DHCP.format(dev="eth1"))
    addr = inet(stack, a, "eth1")
    assert addr and addr != inet(stack, a, "eth0")
    net = api.get(f"/1.0/networks/{world.net}").json()["metadata"]["config"]["ipv4.address"]
    assert ipaddress.ip_address(addr) in ipaddress.ip_interface(net).network
    sh(stack, b, f"ping -c1 -W5 {addr}")  # the sibling reaches the new NIC
    leases = api.get(f"/1.0/networks/{world.net}/leases").json()["metadata"]
    assert any(le["hwaddr"] == cfg["volatile.eth1.hwaddr"] for le in leases)
    # The state API sees it, with its host-side name.
    state = world.live(a)["network"]
    assert state["eth1"]["host_name"] == veth

    lxc(stack, "config", "device", "remove", a, "eth1")
    assert sh(stack, a, "ip link show eth1", check=False).returncode != 0
    assert host_link(veth) is None
    cfg = record(api, a)["config"]
    assert not [k for k in cfg if k.startswith("volatile.eth1.")]
    assert sh(stack, b, f"ping -c1 -W2 {addr}", check=False).returncode != 0


def test_nic_hotplug_through_corral_and_back_after_restart(world, pair, stack, api):
    a, _b = pair
    r = corral(stack, "config", "device", "add", a, "net2", "nic", f"network={world.net}")
    if r.returncode != 0 and "invalid choice" in r.stderr:
        pytest.skip("corral has no 'config device add'")
    assert r.returncode == 0, r.stderr
    try:
        names = sh(stack, a, "ls /sys/class/net").stdout.split()
        assert "eth1" in names  # the first free ethN: eth0 is taken
        world.state(a, "restart", force=True)
        names = sh(stack, a, "ls /sys/class/net").stdout.split()
        assert len([n for n in names if n.startswith("eth")]) == 2
    finally:
        corral(stack, "config", "device", "remove", a, "net2")
    assert "net2" not in record(api, a)["devices"]


def test_failed_nic_hotplug_leaves_the_instance_as_it_was(world, pair, stack, api):
    a, _b = pair
    before, veths = record(api, a), bridge_ports(world.net)
    links = sh(stack, a, "ls /sys/class/net").stdout
    # The name of an interface the container already has: 409, nothing made.
    r = patch_devices(api, a, {"dup": {"type": "nic", "network": world.net, "name": "eth0"}})
    assert r.status_code in (400, 409), r.text
    assert "eth0" in r.json()["error"]
    # An interface the container has that is no device of it (lo): 409 from the
    # hot-plug itself, after the NIC was resolved; nothing stays on the host.
    r = patch_devices(api, a, {"x": {"type": "nic", "network": world.net, "name": "lo"}})
    assert r.status_code == 409 and "'lo'" in r.json()["error"], r.text
    # A network that does not exist: 404.
    r = patch_devices(api, a, {"nowhere": {"type": "nic", "network": "nosuchnet0"}})
    assert r.status_code == 404, r.text
    after = record(api, a)
    assert after["devices"] == before["devices"] and after["config"] == before["config"]
    assert bridge_ports(world.net) == veths
    assert sh(stack, a, "ls /sys/class/net").stdout == links
    # The stock client's own check: a device name the instance already has.
    lxc(stack, "config", "device", "add", a, "n1", "unix-char", "path=/dev/n1", "major=1",
        "minor=3")
    try:
        r = lxc(stack, "config", "device", "add", a, "n1", "nic", f"network={world.net}",
                check=False)
        assert r.returncode != 0 and "already exists" in r.stderr
    finally:
        lxc(stack, "config", "device", "remove", a, "n1")
    # Two NICs of one instance may not take the same name inside it (400 before anything).
    r = patch_devices(api, a, {"x": {"type": "nic", "network": world.net, "name": "eth5"},
                               "y": {"type": "nic", "network": world.net, "name": "eth5"}})
    assert r.status_code == 400 and "eth5" in r.json()["error"], r.text
    assert bridge_ports(world.net) == veths


def test_static_address_of_a_running_nic_applies_as_a_lease(world, pair, stack, api):
    a, b = pair
    net = api.get(f"/1.0/networks/{world.net}").json()["metadata"]["config"]["ipv4.address"]
    iface = ipaddress.ip_interface(net)
    want = unleased(api, world.net, iface, 200)
    mac = record(api, a)["config"]["volatile.eth0.hwaddr"]
    before = record(api, a)
    # Outside the subnet: 400, nothing stored.
    r = lxc(stack, "config", "device", "override", a, "eth0", "ipv4.address=192.0.2.7",
            check=False)
    assert r.returncode != 0, r.stdout
    assert record(api, a)["devices"] == before["devices"]
    lxc(stack, "config", "device", "override", a, "eth0", f"ipv4.address={want}")
    try:
        leases = api.get(f"/1.0/networks/{world.net}/leases").json()["metadata"]
        assert any(le["hwaddr"] == mac and le["address"] == want and le["type"] == "static"
                   for le in leases), leases
        assert sh(stack, a, "ip link show eth0").returncode == 0  # not re-plugged
        sh(stack, a, FRESH_LEASE)
        assert inet(stack, a, "eth0") == want
        sh(stack, b, f"ping -c1 -W5 {want}")
    finally:
        lxc(stack, "config", "device", "remove", a, "eth0")  # back to the profile's
    leases = api.get(f"/1.0/networks/{world.net}/leases").json()["metadata"]
    assert not any(le["hwaddr"] == mac and le.get("type") == "static" for le in leases)


# -- proxy devices --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text


def _forwarder(world, name: str, dev: str) -> int:
    data = json.loads((world.lxc_dir(name) / "proxy" / f"{dev}.json").read_text())
    return data["pid"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_proxy_serves_a_container_port_and_survives_a_service_restart(world, pair, stack,
                                                                      api):
    a, _b = pair
    sh(stack, a, "mkdir -p /www && echo hello-from-inside > /www/index.html && "
                 "httpd -p 127.0.0.1:8081 -h /www")
    port = _free_port()
    lxc(stack, "config", "device", "add", a, "web", "proxy",
        f"listen=tcp:127.0.0.1:{port}", "connect=tcp:127.0.0.1:8081")
    try:
        assert _get(port).strip() == "hello-from-inside"
        pid = _forwarder(world, a, "web")
        stack.stop("instance")
        try:
            assert _get(port).strip() == "hello-from-inside"  # nobody needed meanwhile
        finally:
            stack.start("instance")
        wait_for(lambda: api.get(f"/1.0/instances/{a}").status_code == 200, 60,
                 what="the instance service back")
        assert _forwarder(world, a, "web") == pid  # adopted, not replaced
        assert _get(port).strip() == "hello-from-inside"
        # Stopping the container ends the forwarder; starting it brings one back.
        world.state(a, "stop", force=True)
        wait_for(lambda: not _alive(pid), 10, what="the forwarder to end")
        world.state(a, "start")
        sh(stack, a, "mkdir -p /www && echo again > /www/index.html && "
                     "httpd -p 127.0.0.1:8081 -h /www")
        wait_for(lambda: _get(port).strip() == "again", 10, what="the proxy after start")
        pid = _forwarder(world, a, "web")
    finally:
        lxc(stack, "config", "device", "remove", a, "web", check=False)
    assert not _alive(pid)
    assert not (world.lxc_dir(a) / "proxy" / "web.json").exists()
    with pytest.raises(httpx.HTTPError):
        _get(port)


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("up", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(data.upper(), peer)
"""


def test_proxy_through_corral(world, pair, stack, api):
    a, _b = pair
    sh(stack, a, "mkdir -p /c && echo via-corral > /c/index.html && "
                 "httpd -p 127.0.0.1:8084 -h /c")
    port = _free_port()
    r = corral(stack, "config", "device", "add", a, "cweb", "proxy",
               f"listen=tcp:127.0.0.1:{port}", "connect=tcp:127.0.0.1:8084")
    assert r.returncode == 0, r.stderr
    try:
        assert _get(port).strip() == "via-corral"
        r = corral(stack, "config", "device", "add", a, "cbad", "proxy",
                   "listen=tcp:127.0.0.1:http", "connect=tcp:127.0.0.1:8084")
        assert r.returncode != 0 and "port" in r.stderr, r.stderr
    finally:
        assert corral(stack, "config", "device", "remove", a, "cweb").returncode == 0
    with pytest.raises(httpx.HTTPError):
        _get(port)


def test_proxy_udp_and_unix_bind_instance(world, pair, stack, api):
    a, _b = pair
    pid = world.live(a)["pid"]
    # UDP: an echo server in the container's network namespace (busybox nc has no -u).
    echo = subprocess.Popen(["nsenter", f"--target={pid}", "--net", "python3", "-c",
                             UDP_ECHO, "5353"], stdout=subprocess.PIPE)
    try:
        assert echo.stdout.readline() == b"up\n"
        port = _free_port()
        lxc(stack, "config", "device", "add", a, "dns", "proxy",
            f"listen=udp:127.0.0.1:{port}", "connect=udp:127.0.0.1:5353")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                for word in (b"ping", b"pong"):
                    s.sendto(word, ("127.0.0.1", port))
                    assert s.recv(100) == word.upper()
        finally:
            lxc(stack, "config", "device", "remove", a, "dns")
    finally:
        echo.kill()
        echo.wait()
    # bind=instance: a unix socket in the container's /run reaching a host TCP port.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    hport = srv.getsockname()[1]
    lxc(stack, "config", "device", "add", a, "up", "proxy", "bind=instance",
        "listen=unix:/run/host.sock", f"connect=tcp:127.0.0.1:{hport}", "mode=0666")
    try:
        ls = sh(stack, a, "ls -ln /run/host.sock").stdout.split()
        assert ls[0] == "srw-rw-rw-" and ls[2] == "0", ls  # the container's root's
        with socket.socket(socket.AF_UNIX) as c:  # the container's file, reached from here
            c.connect(f"/proc/{pid}/root/run/host.sock")
            c.sendall(b"from-guest\n")
            srv.settimeout(15)
            conn, _ = srv.accept()
            conn.settimeout(5)
            assert conn.recv(100) == b"from-guest\n"
            conn.sendall(b"back\n")
            c.settimeout(5)
            assert c.recv(100) == b"back\n"
            conn.close()
    finally:
        srv.close()
        lxc(stack, "config", "device", "remove", a, "up")
    assert sh(stack, a, "test -e /run/host.sock", check=False).returncode != 0


def test_proxy_nat_through_nftables(world, pair, stack, api):
    a, _b = pair
    net = api.get(f"/1.0/networks/{world.net}").json()["metadata"]["config"]["ipv4.address"]
    iface = ipaddress.ip_interface(net)
    gw, static = str(iface.ip), unleased(api, world.net, iface, 201)
    port = _free_port()
    # Not a static address of the instance (yet): refused, with the reason.
    r = lxc(stack, "config", "device", "add", a, "natp", "proxy", "nat=true",
            f"listen=tcp:{gw}:{port}", f"connect=tcp:{static}:8083", check=False)
    assert r.returncode != 0 and "static" in r.stderr, r.stderr
    r = lxc(stack, "config", "device", "add", a, "natp", "proxy", "nat=true",
            f"listen=tcp:127.0.0.1:{port}", f"connect=tcp:{static}:8083", check=False)
    assert r.returncode != 0 and "loopback" in r.stderr, r.stderr
    lxc(stack, "config", "device", "override", a, "eth0", f"ipv4.address={static}")
    try:
        sh(stack, a, FRESH_LEASE)
        assert inet(stack, a, "eth0") == static
        sh(stack, a, "mkdir -p /n && echo natted > /n/index.html && httpd -p 8083 -h /n")
        lxc(stack, "config", "device", "add", a, "natp", "proxy", "nat=true",
            f"listen=tcp:{gw}:{port}", f"connect=tcp:{static}:8083")
        table = subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                               text=True).stdout
        assert f"dport {port} dnat ip to {static}:8083" in table
        assert not (world.lxc_dir(a) / "proxy" / "natp.json").exists()  # no forwarder
        assert httpx.get(f"http://{gw}:{port}/", timeout=5).text.strip() == "natted"
        lxc(stack, "config", "device", "remove", a, "natp")
        table = subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                               text=True).stdout
        assert f"dport {port} dnat" not in table
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{gw}:{port}/", timeout=3)
    finally:
        lxc(stack, "config", "device", "remove", a, "natp", check=False)
        lxc(stack, "config", "device", "remove", a, "eth0")


def test_proxy_unix_path_cannot_leave_the_container(world, pair, stack, tmp_path):
    """A symbolic link in the container pointing at a host path does not lead the
    forwarder (host root) to a host socket: container paths resolve inside its root."""
    a, _b = pair
    tmp_path.chmod(0o755)
    host_sock = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(host_sock))
    srv.listen(1)
    srv.settimeout(2)
    sh(stack, a, f"mkdir -p /run && ln -sfn {tmp_path} /run/evil")
    port = _free_port()
    lxc(stack, "config", "device", "add", a, "esc", "proxy", f"listen=tcp:127.0.0.1:{port}",
        "connect=unix:/run/evil/s.sock")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"x")
            with pytest.raises(TimeoutError):
                srv.accept()  # the host socket is never reached
    finally:
        srv.close()
        lxc(stack, "config", "device", "remove", a, "esc")
        sh(stack, a, "rm -f /run/evil")


@pytest.mark.parametrize("dev, words", [
    ({"listen": "tcp:127.0.0.1", "connect": "tcp:127.0.0.1:80"}, "missing port"),
    ({"listen": "tcp:nothere:80", "connect": "tcp:127.0.0.1:80"}, "not an IP address"),
    ({"listen": "sctp:127.0.0.1:80", "connect": "tcp:127.0.0.1:80"}, "expected tcp"),
    ({"listen": "tcp:127.0.0.1:99999", "connect": "tcp:127.0.0.1:80"}, "1 to 65535"),
    ({"listen": "udp:127.0.0.1:80", "connect": "tcp:127.0.0.1:80"}, "udp"),
    ({"connect": "tcp:127.0.0.1:80"}, "listen"),
    ({"listen": "tcp:127.0.0.1:80", "connect": "tcp:127.0.0.1:80", "bind": "x"}, "bind"),
    ({"listen": "tcp:127.0.0.1:80", "connect": "tcp:127.0.0.1:80", "foo": "1"}, "foo"),
    ({"listen": "unix:/a", "connect": "tcp:127.0.0.1:80", "nat": "true"}, "nat"),
])
def test_bad_proxy_devices_are_400(world, pair, api, dev, words):
    a, _b = pair
    before = record(api, a)["devices"]
    r = patch_devices(api, a, {"p": {"type": "proxy", **dev}})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert record(api, a)["devices"] == before


def test_proxy_that_cannot_listen_is_refused_and_leaves_nothing(world, pair, stack, api):
    a, _b = pair
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = lxc(stack, "config", "device", "add", a, "busy", "proxy",
                f"listen=tcp:127.0.0.1:{port}", "connect=tcp:127.0.0.1:80", check=False)
        assert r.returncode != 0 and "in use" in r.stderr.lower(), r.stderr
    assert "busy" not in record(api, a)["devices"]
    assert not (world.lxc_dir(a) / "proxy" / "busy.json").exists()


def test_a_change_failing_half_way_is_undone_whole(world, pair, stack, api):
    """A NIC, a unix node and a forwarder are made, then a proxy cannot listen: the
    three are undone and nothing is stored."""
    a, _b = pair
    before, ports = record(api, a), bridge_ports(world.net)
    free = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        r = patch_devices(api, a, {
            "eth7": {"type": "nic", "network": world.net, "name": "eth7"},
            "n7": {"type": "unix-char", "path": "/dev/n7", "major": "1", "minor": "5"},
            "p1": {"type": "proxy", "listen": f"tcp:127.0.0.1:{free}",
                   "connect": "tcp:127.0.0.1:80"},
            "p2": {"type": "proxy", "listen": f"tcp:127.0.0.1:{busy}",
                   "connect": "tcp:127.0.0.1:80"}})
    assert r.status_code == 400 and "in use" in r.json()["error"], r.text
    after = record(api, a)
    assert after["devices"] == before["devices"] and after["config"] == before["config"]
    assert bridge_ports(world.net) == ports
    assert sh(stack, a, "ip link show eth7", check=False).returncode != 0
    assert sh(stack, a, "test -e /dev/n7", check=False).returncode != 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", free)) != 0  # p1's forwarder went
    assert not list((world.lxc_dir(a) / "proxy").glob("*.json"))
    assert not (world.lxc_dir(a) / "hotplug.json").exists()


# -- unix devices, refused types ----------------------------------------------------------------

@pytest.fixture
def loop_dev(tmp_path):
    img = tmp_path / "blk.img"
    img.write_bytes(b"HELLO-BLOCK" + b"\0" * (1024 * 1024))
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_unix_block_hotplug_reads_the_device_and_unplugs(world, pair, stack, api, loop_dev):
    a, _b = pair
    read = "head -c 11 /dev/xdisk"
    assert sh(stack, a, read, check=False).returncode != 0
    lxc(stack, "config", "device", "add", a, "xd", "unix-block", f"source={loop_dev}",
        "path=/dev/xdisk", "mode=0640")
    try:
        assert sh(stack, a, read).stdout == "HELLO-BLOCK"
        ls = sh(stack, a, "ls -ln /dev/xdisk").stdout.split()
        assert ls[0] == "brw-r-----" and ls[2] == "0"  # root's in the container
    finally:
        lxc(stack, "config", "device", "remove", a, "xd")
    assert sh(stack, a, "test -e /dev/xdisk", check=False).returncode != 0
    assert not (world.lxc_dir(a) / "devices" / "unix.xd").exists()


def test_unix_char_by_number_and_missing_source(world, pair, stack, api):
    a, _b = pair
    lxc(stack, "config", "device", "add", a, "z", "unix-char", "path=/dev/myzero",
        "major=1", "minor=5", "mode=0666")
    try:
        assert sh(stack, a, "head -c 4 /dev/myzero | od -An -tx1").stdout.split() == \
            ["00"] * 4
    finally:
        lxc(stack, "config", "device", "remove", a, "z")
    r = patch_devices(api, a, {"m": {"type": "unix-char", "source": "/dev/nosuchdev"}})
    assert r.status_code == 404 and "does not exist" in r.json()["error"], r.text
    r = patch_devices(api, a, {"m": {"type": "unix-char", "source": "/dev/loop0"}})
    assert r.status_code == 400 and "not a character device" in r.json()["error"], r.text
    assert "m" not in record(api, a)["devices"]


@pytest.mark.parametrize("kind", ["gpu", "usb"])
def test_gpu_and_usb_are_refused_with_the_reason(world, pair, stack, kind):
    a, _b = pair
    r = lxc(stack, "config", "device", "add", a, "x", kind, check=False)
    assert r.returncode != 0 and "this host has no" in r.stderr, r.stderr


def test_devices_are_made_again_at_start(world, stack, api):
    """A stopped container with a unix-char device and a proxy gets both when it starts."""
    port = _free_port()
    name = world.create("cold", devices={
        "z": {"type": "unix-char", "path": "/dev/myzero", "major": "1", "minor": "5"},
        "p": {"type": "proxy", "listen": f"tcp:127.0.0.1:{port}",
              "connect": "tcp:127.0.0.1:8082"}})
    world.state(name, "start")
    try:
        assert sh(stack, name, "test -c /dev/myzero").returncode == 0
        sh(stack, name, "mkdir -p /w && echo cold > /w/index.html && "
                        "httpd -p 127.0.0.1:8082 -h /w")
        wait_for(lambda: _get(port).strip() == "cold", 10, what="the proxy")
    finally:
        world.remove(name)
    assert not Path(world.lxc_dir(name)).exists()
    # A source that went away: the start is refused before the container runs.
    name = world.create("nosrc", devices={
        "m": {"type": "unix-char", "source": "/dev/corral-no-such-dev"}})
    op = world.state(name, "start", ok=False)
    assert op["status"] == "Failure" and "does not exist" in op["err"], op
    assert world.live(name)["status"] == "Stopped"
    world.remove(name)
