"""Network forwards through the stock client: a listen address on the host forwards a TCP
port to a real container (DNAT), from a client namespace and from the host itself; the
default target_address takes the other ports; bad forwards are 400/409 and a deleted
forward leaves no rule.

The listen address sits on a veth pair the test makes (198.18.<n>.1, a benchmarking range
no one routes), the client in a namespace on its other end: nothing leaves the machine.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys

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
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def inet(world, name: str) -> list[str]:
    eth0 = (world.live(name).get("network") or {}).get("eth0") or {}
    return [a["address"] for a in eth0.get("addresses", []) if a["family"] == "inet"]


@pytest.fixture(scope="module")
def server(world, stack):
    """A running container serving "hello" on TCP 80 and "second" on 81."""
    c = world.name("fwd")
    lxc(stack, "launch", world.image, c, "-p", world.profile)
    wait_for(lambda: inet(world, c), 30)
    lxc(stack, "exec", c, "--", "sh", "-c",
        "mkdir -p /w1 /w2 && echo hello > /w1/index.html && echo second > /w2/index.html"
        " && httpd -p 80 -h /w1 && httpd -p 81 -h /w2")
    return inet(world, c)[0]


@pytest.fixture(scope="module")
def client():
    """(namespace, listen address): a veth pair, the host end 198.18.<n>.1/24, the other
    end in a namespace as 198.18.<n>.2 with the host as its gateway."""
    tag = secrets.token_hex(3)[:5]
    n = secrets.randbelow(250) + 2
    ns, host_end, ns_end = f"crtf{tag}", f"crtf{tag}a", f"crtf{tag}b"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", f"198.18.{n}.1/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "-n", ns, "addr", "add", f"198.18.{n}.2/24", "dev", ns_end)
        sh("ip", "-n", ns, "link", "set", ns_end, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"198.18.{n}.1")
        yield ns, f"198.18.{n}.1"
    finally:
        sh("ip", "link", "del", host_end, check=False)
        sh("ip", "netns", "del", ns, check=False)


_FETCH = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
except OSError:
    sys.exit(1)
print(data.decode(errors="replace").rsplit("\\r\\n\\r\\n", 1)[-1].strip())
"""


def fetch_from_ns(ns: str, address: str, port: int) -> str:
    """What an HTTP GET from the namespace answers ("" when nothing does)."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _FETCH, address,
                        str(port)], capture_output=True, text=True, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else ""


def fetch_from_host(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace").rsplit("\r\n\r\n", 1)[-1].strip()


def nft_has(table: str) -> bool:
    return subprocess.run(["nft", "list", "table", "inet", table],
                          capture_output=True).returncode == 0


def test_forward_reaches_an_instance(world, api, stack, server, client):
    ns, listen = client
    net = world.net
    assert fetch_from_ns(ns, listen, 8080) == ""  # nothing there before the forward
    lxc(stack, "network", "forward", "create", net, listen, "user.a=b")
    try:
        lxc(stack, "network", "forward", "port", "add", net, listen, "tcp", "8080",
            server, "80")
        assert nft_has(f"corral-fwd-{net}")
        assert fetch_from_ns(ns, listen, 8080) == "hello"
        assert fetch_from_host(listen, 8080) == "hello"
        # A sibling on the same bridge reaches it through the forward too (hairpin).
        sibling = world.name("sib")
        lxc(stack, "launch", world.image, sibling, "-p", world.profile)
        wait_for(lambda: inet(world, sibling), 30)
        r = lxc(stack, "exec", sibling, "--", "sh", "-c",  # busybox wget crashes here
                f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {listen} 8080",
                check=False)
        assert r.stdout.rstrip().endswith("hello"), (r.stdout, r.stderr)
        world.remove(sibling)
        out = lxc(stack, "network", "forward", "list", net, "--format", "csv").stdout
        assert listen in out, out
        shown = lxc(stack, "network", "forward", "show", net, listen).stdout
        assert "listen_port: \"8080\"" in shown and f"target_address: {server}" in shown, \
            shown
        fwd = api.get(f"/1.0/networks/{net}/forwards/{listen}").json()["metadata"]
        assert fwd["ports"] == [{"description": "", "protocol": "tcp", "listen_port": "8080",
                                 "target_port": "80", "target_address": server}]
        assert fwd["config"] == {"user.a": "b"} and fwd["location"] == "none"

        # A second entry: a port range maps to one target port.
        lxc(stack, "network", "forward", "port", "add", net, listen, "tcp", "9000-9001",
            server, "81")
        assert fetch_from_ns(ns, listen, 9001) == "second"
        # The default target takes what no port entry names, port for port.
        lxc(stack, "network", "forward", "set", net, listen, f"target_address={server}")
        assert fetch_from_ns(ns, listen, 81) == "second"
        lxc(stack, "network", "forward", "port", "remove", net, listen, "tcp", "8080")
        assert fetch_from_ns(ns, listen, 8080) == ""

        # Bad forwards: 400 with the reason, a duplicate listen address 409.
        r = lxc(stack, "network", "forward", "port", "add", net, listen, "tcp", "7000",
                "192.0.2.7", "80", check=False)
        assert r.returncode != 0 and "inside the subnet" in r.stderr, r.stderr
        r = lxc(stack, "network", "forward", "port", "add", net, listen, "sctp", "7000",
                server, check=False)
        assert r.returncode != 0 and "tcp or udp" in r.stderr, r.stderr
        r = lxc(stack, "network", "forward", "create", net, server, check=False)
        assert r.returncode != 0 and "inside the subnet" in r.stderr, r.stderr
        r = api.post(f"/1.0/networks/{net}/forwards", json={"listen_address": listen})
        assert r.status_code == 409, r.text
        r = api.post(f"/1.0/networks/{net}/forwards", json={"listen_address": "nope"})
        assert r.status_code == 400, r.text
        assert api.get(f"/1.0/networks/{net}/forwards/192.0.2.99").status_code == 404
        r = api.post(f"/1.0/networks/{net}", json={"name": f"{net}x"})
        assert r.status_code == 409 and "has forwards" in r.text, r.text
    finally:
        lxc(stack, "network", "forward", "delete", net, listen, check=False)
    assert not nft_has(f"corral-fwd-{net}")
    assert fetch_from_ns(ns, listen, 9001) == ""
    assert api.get(f"/1.0/networks/{net}/forwards").json()["metadata"] == []


def test_tables_come_back_after_a_reboot(world, api, stack, server, client):
    """What a reboot (or a flush by hand) loses, the network service's next start rebuilds
    from the records: the forward's DNAT and the network's ACL table."""
    ns, listen = client
    net, acl = world.net, f"{world.prefix}rb"
    lxc(stack, "network", "forward", "create", net, listen, f"target_address={server}")
    lxc(stack, "network", "acl", "create", acl)
    lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=drop",
        "protocol=tcp", "destination_port=81")
    lxc(stack, "network", "set", net, f"security.acls={acl}",
        "security.acls.default.ingress.action=allow")
    try:
        assert fetch_from_ns(ns, listen, 80) == "hello"
        assert fetch_from_ns(ns, listen, 81) == ""
        sh("nft", "delete", "table", "inet", f"corral-fwd-{net}")
        sh("nft", "delete", "table", "inet", f"corral-acl-{net}")
        assert fetch_from_ns(ns, listen, 80) == ""
        stack.stop("network")
        stack.start("network")
        wait_for(lambda: api.get(f"/1.0/networks/{net}/forwards").status_code == 200, 30)
        assert nft_has(f"corral-fwd-{net}") and nft_has(f"corral-acl-{net}")
        assert fetch_from_ns(ns, listen, 80) == "hello"
        assert fetch_from_ns(ns, listen, 81) == ""
    finally:
        lxc(stack, "network", "unset", net, "security.acls", check=False)
        lxc(stack, "network", "unset", net, "security.acls.default.ingress.action",
            check=False)
        lxc(stack, "network", "acl", "delete", acl, check=False)
        lxc(stack, "network", "forward", "delete", net, listen, check=False)
    assert not nft_has(f"corral-acl-{net}") and not nft_has(f"corral-fwd-{net}")
