"""Network ACLs through the stock client: an ACL on a bridge blocks one port of a real
container and allows another, rules come and go with ``lxc network acl rule add/remove``,
bad rules are 400s, an ACL in use cannot be deleted, and nothing stays in nftables.

The container serves two TCP ports with busybox httpd; the host connects to them over
the test's own bridge (no NAT, nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from ipaddress import IPv4Interface

import pytest

from shared import subjects

from .stack import BIN, wait_for
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def inet(world, name: str) -> list[str]:
    eth0 = (world.live(name).get("network") or {}).get("eth0") or {}
    return [a["address"] for a in eth0.get("addresses", []) if a["family"] == "inet"]


def reachable(address: str, port: int) -> bool:
    """A TCP connection and an HTTP answer from the container (False when refused,
    rejected or timed out)."""
    try:
        with socket.create_connection((address, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):  # headers and body may come apart
                data += chunk
            return b"hello" in data
    except OSError:
        return False


def nft_has(table: str) -> bool:
    return subprocess.run(["nft", "list", "table", "inet", table],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def server(world, api, stack):
    """A running container serving "hello" on TCP 80 and 81; its IPv4 address."""
    c = world.name("acl")
    lxc(stack, "launch", world.image, c, "-p", world.profile)
    wait_for(lambda: inet(world, c), 30)
    lxc(stack, "exec", c, "--", "sh", "-c",
        "mkdir -p /www && echo hello > /www/index.html && "
        "httpd -p 80 -h /www && httpd -p 81 -h /www")
    address = inet(world, c)[0]
    wait_for(lambda: reachable(address, 80) and reachable(address, 81), 15)
    return address


def test_acl_blocks_one_port_and_allows_another(world, api, stack, server):
    acl = f"{world.prefix}web"
    lxc(stack, "network", "acl", "create", acl, "user.team=web")
    try:
        lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=allow",
            "protocol=tcp", "destination_port=80", "description=web")
        shown = lxc(stack, "network", "acl", "show", acl).stdout
        assert "destination_port: \"80\"" in shown or "destination_port: '80'" in shown \
            or "destination_port: 80" in shown, shown
        assert "state: enabled" in shown and "user.team: web" in shown, shown
        assert acl in lxc(stack, "network", "acl", "list", "--format", "csv").stdout

        # Not used yet: both ports answer.
        assert reachable(server, 80) and reachable(server, 81)
        lxc(stack, "network", "set", world.net, f"security.acls={acl}")
        assert nft_has(f"corral-acl-{world.net}")
        assert reachable(server, 80), "the allowed port must answer"
        assert not reachable(server, 81), "the default action (reject) must block 81"
        acl_obj = api.get(f"/1.0/network-acls/{acl}").json()["metadata"]
        assert acl_obj["used_by"] == [f"/1.0/networks/{world.net}"]

        # Rules change live: without the allow rule, 80 is blocked too.
        lxc(stack, "network", "acl", "rule", "remove", acl, "ingress", "action=allow",
            "protocol=tcp", "destination_port=80", "description=web")
        assert not reachable(server, 80)
        # Default action allow: everything passes again; a drop rule stops 81 only.
        lxc(stack, "network", "set", world.net, "security.acls.default.ingress.action=allow")
        lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=drop",
            "protocol=tcp", "destination_port=81")
        assert reachable(server, 80) and not reachable(server, 81)

        # Bad input: 400 with LXD's reasons; an ACL in use is not deleted.
        r = lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=bogus",
                check=False)
        assert r.returncode != 0 and "Action must be one of" in r.stderr, r.stderr
        r = lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=allow",
                "destination_port=22", check=False)
        assert r.returncode != 0 and "needs protocol tcp or udp" in r.stderr, r.stderr
        r = lxc(stack, "network", "acl", "delete", acl, check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
        r = lxc(stack, "network", "set", world.net, "security.acls=nosuchacl", check=False)
        assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
        r = api.post("/1.0/network-acls", json={"name": acl})
        assert r.status_code == 409, r.text
        r = api.post("/1.0/network-acls", json={"name": "bad/name"})
        assert r.status_code == 400, r.text
    finally:
        lxc(stack, "network", "unset", world.net, "security.acls", check=False)
        lxc(stack, "network", "unset", world.net, "security.acls.default.ingress.action",
            check=False)
    assert not nft_has(f"corral-acl-{world.net}")
    assert reachable(server, 80) and reachable(server, 81)
    lxc(stack, "network", "acl", "delete", acl)
    assert api.get(f"/1.0/network-acls/{acl}").status_code == 404


def test_acl_rename_edit_and_events(world, api, stack):
    name, new = f"{world.prefix}a1", f"{world.prefix}a2"
    r = api.post("/1.0/network-acls", json={"name": name, "description": "d", "egress": [
        {"action": "reject", "state": "enabled", "protocol": "udp",
         "destination": "192.0.2.0/24", "destination_port": "53"}]})
    assert r.status_code in (200, 201), r.text
    got = api.get(f"/1.0/network-acls/{name}")
    etag = got.headers["ETag"]
    body = got.json()["metadata"]
    assert body["egress"][0]["destination"] == "192.0.2.0/24" and body["ingress"] == []
    r = api.put(f"/1.0/network-acls/{name}", headers={"If-Match": etag},
                json={"description": "e", "ingress": [], "egress": []})
    assert r.status_code == 200, r.text
    r = api.put(f"/1.0/network-acls/{name}", headers={"If-Match": etag},
                json={"description": "f"})
    assert r.status_code == 412, r.text
    r = api.post(f"/1.0/network-acls/{name}", json={"name": new})
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/network-acls/{name}").status_code == 404
    assert api.get(f"/1.0/network-acls/{new}").json()["metadata"]["description"] == "e"
    urls = api.get("/1.0/network-acls").json()["metadata"]
    assert f"/1.0/network-acls/{new}" in urls
    assert api.delete(f"/1.0/network-acls/{new}").status_code == 200
    ip = IPv4Interface(api.get(f"/1.0/networks/{world.net}").json()["metadata"]["config"][
        "ipv4.address"])
    assert ip.network.prefixlen  # the world's network is untouched


def corral(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "corral"), *args], env={**stack.env},
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_corral_cli_acl_and_forward(world, api, stack, server):
    acl = f"{world.prefix}cli"
    corral(stack, "network", "acl", "create", acl, "--description", "from corral")
    corral(stack, "network", "acl", "rule", "add", acl, "ingress", "action=allow",
           "protocol=tcp", "destination_port=81")
    assert acl in corral(stack, "network", "acl", "list", "--format", "csv").stdout
    assert "destination_port" in corral(stack, "network", "acl", "show", acl).stdout
    corral(stack, "network", "set", world.net, f"security.acls={acl}")
    try:
        assert reachable(server, 81) and not reachable(server, 80)
        r = corral(stack, "network", "acl", "rule", "add", acl, "egress", "action=nope",
                   check=False)
        assert r.returncode != 0 and "Action must be one of" in r.stderr, r.stderr
        corral(stack, "network", "acl", "rule", "remove", acl, "ingress",
               "destination_port=81")
        assert not reachable(server, 81)
    finally:
        corral(stack, "network", "unset", world.net, "security.acls")
    assert reachable(server, 80) and reachable(server, 81)
    corral(stack, "network", "acl", "delete", acl)

    listen = "198.51.100.77"  # a host-local DNAT from the host's own output
    corral(stack, "network", "forward", "create", world.net, listen)
    try:
        corral(stack, "network", "forward", "port", "add", world.net, listen, "tcp", "80",
               server)
        out = corral(stack, "network", "forward", "list", world.net, "--format", "csv").stdout
        assert listen in out, out
        assert "target_address: " + server in corral(
            stack, "network", "forward", "show", world.net, listen).stdout
        corral(stack, "network", "forward", "port", "remove", world.net, listen, "tcp", "80")
        assert api.get(f"/1.0/networks/{world.net}/forwards/{listen}").json()[
            "metadata"]["ports"] == []
    finally:
        corral(stack, "network", "forward", "delete", world.net, listen)
    assert api.get(f"/1.0/networks/{world.net}/forwards").json()["metadata"] == []


def test_nic_acl_filters_only_its_nic(world, api, stack, server):
    """A NIC's own security.acls (with its static address): only that instance is
    filtered; the ACL lists the instance in used_by and cannot go while it is used."""
    acl = f"{world.prefix}nic"
    lxc(stack, "network", "acl", "create", acl)
    lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=allow",
        "protocol=tcp", "destination_port=81")
    gw = IPv4Interface(api.get(f"/1.0/networks/{world.net}").json()["metadata"]["config"][
        "ipv4.address"])
    static = str(gw.network.network_address + 91)
    c = world.name("nacl")
    lxc(stack, "init", world.image, c, "-p", world.profile)
    r = lxc(stack, "config", "device", "override", c, "eth0", f"security.acls={acl}",
            check=False)
    if r.returncode == 0:  # refused at start without a static address
        r = lxc(stack, "start", c, check=False)
        assert r.returncode != 0 and "needs 'ipv4.address'" in r.stderr, r.stderr
    lxc(stack, "config", "device", "set", c, "eth0", f"ipv4.address={static}",
        f"security.acls={acl}")
    lxc(stack, "start", c)
    wait_for(lambda: inet(world, c) == [static], 30)
    lxc(stack, "exec", c, "--", "sh", "-c",
        "mkdir -p /www && echo hello > /www/index.html && "
        "httpd -p 80 -h /www && httpd -p 81 -h /www")
    wait_for(lambda: reachable(static, 81), 15)
    assert not reachable(static, 80)
    assert reachable(server, 80) and reachable(server, 81)  # the other NIC: untouched
    used = api.get(f"/1.0/network-acls/{acl}").json()["metadata"]["used_by"]
    assert used == [f"/1.0/instances/{c}"], used
    r = lxc(stack, "network", "acl", "delete", acl, check=False)
    assert r.returncode != 0 and "in use" in r.stderr, r.stderr
    # A rule change reaches the NIC's chains live.
    lxc(stack, "network", "acl", "rule", "add", acl, "ingress", "action=allow",
        "protocol=tcp", "destination_port=80")
    assert reachable(static, 80)
    world.remove(c)
    assert not nft_has(f"corral-acl-{world.net}")
    lxc(stack, "network", "acl", "delete", acl)


async def test_acl_and_forward_lifecycle_events(world, api, bus):
    acl, new = f"{world.prefix}ev", f"{world.prefix}ev2"
    listen = "198.51.100.88"
    seen: list[dict] = []

    async def on_event(msg):
        seen.append(json.loads(msg.data)["metadata"])

    subs = [await bus.subscribe(subjects.event("lifecycle", "default", entity), on_event)
            for entity in ("network-acl", "network-forward")]  # the action's entity
    try:
        for method, url, body in (
                ("POST", "/1.0/network-acls", {"name": acl}),
                ("PATCH", f"/1.0/network-acls/{acl}", {"description": "x"}),
                ("POST", f"/1.0/network-acls/{acl}", {"name": new}),
                ("DELETE", f"/1.0/network-acls/{new}", None),
                ("POST", f"/1.0/networks/{world.net}/forwards", {"listen_address": listen}),
                ("DELETE", f"/1.0/networks/{world.net}/forwards/{listen}", None)):
            r = await asyncio.to_thread(api.request, method, url, json=body)
            assert r.status_code in (200, 201), (url, r.text)
        for _ in range(100):
            if len(seen) >= 6:
                break
            await asyncio.sleep(0.05)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    got = [(e["action"], e["source"]) for e in seen]
    fwd = f"/1.0/networks/{world.net}/forwards/{listen}"
    assert got == [("network-acl-created", f"/1.0/network-acls/{acl}"),
                   ("network-acl-updated", f"/1.0/network-acls/{acl}"),
                   ("network-acl-renamed", f"/1.0/network-acls/{new}"),
                   ("network-acl-deleted", f"/1.0/network-acls/{new}"),
                   ("network-forward-created", fwd), ("network-forward-deleted", fwd)], got


def test_lxc_acl_edit_from_stdin(world, api, stack):
    acl = f"{world.prefix}ed"
    lxc(stack, "network", "acl", "create", acl)
    try:
        yaml = ("description: edited\ningress:\n- action: drop\n  state: enabled\n"
                "  protocol: udp\n  destination_port: \"53\"\negress: []\nconfig:\n"
                "  user.k: v\n")
        r = subprocess.run(["lxc", "network", "acl", "edit", acl], input=yaml, text=True,
                           capture_output=True, env={**stack.env, "LXD_DIR": str(stack.dir)},
                           timeout=60)
        assert r.returncode == 0, r.stderr
        got = api.get(f"/1.0/network-acls/{acl}").json()["metadata"]
        assert got["description"] == "edited" and got["config"] == {"user.k": "v"}
        assert got["ingress"] == [{"action": "drop", "state": "enabled", "protocol": "udp",
                                   "destination_port": "53"}]
        r = subprocess.run(["lxc", "network", "acl", "edit", acl],
                           input="ingress:\n- action: maybe\n  state: enabled\n", text=True,
                           capture_output=True, env={**stack.env, "LXD_DIR": str(stack.dir)},
                           timeout=60)
        assert r.returncode != 0 and "Action must be one of" in r.stderr, r.stderr
        assert api.get(f"/1.0/network-acls/{acl}").json()["metadata"]["description"] == \
            "edited"  # a refused edit changes nothing
    finally:
        lxc(stack, "network", "acl", "delete", acl)
