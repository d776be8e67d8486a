"""The network service killed between storing a forward or an ACL change and loading its
nftables rules: at its next start the rules match the records again (the records are the
truth; every start rebuilds each network's ACL and forward tables from them).

A private stack (its own nats-server and services): its network service is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .stack import private_stack, socket_client, wait_for
from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def fstack(request):
    with private_stack(request, "netfaults") as s:
        yield s


@pytest.fixture(scope="module")
def fapi(fstack):
    with socket_client(fstack) as client:
        yield client


@pytest.fixture(scope="module")
def world(fstack, fapi, busybox_tarball):
    with make_world(fapi, fstack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def restart(stack, fault: str | None = None) -> None:
    stack.stop("network")
    env = stack.env
    stack.env = {**env, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        stack.start("network")
    finally:
        stack.env = env
    wait_for(stack.ready, 60, what="the network service to answer")


def killed(stack) -> None:
    proc = stack.procs["network"]
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def table(name: str) -> str:
    r = subprocess.run(["nft", "list", "table", "inet", name], capture_output=True,
                       text=True)
    return r.stdout if r.returncode == 0 else ""


def test_forward_stored_then_killed(fstack, fapi, world):
    net, listen = world.net, "198.51.100.201"
    cfg = fapi.get(f"/1.0/networks/{net}").json()["metadata"]["config"]
    target = cfg["ipv4.address"].rsplit(".", 1)[0] + ".50"
    restart(fstack, "network:forward_stored")
    try:
        r = fapi.post(f"/1.0/networks/{net}/forwards", json={
            "listen_address": listen, "config": {"target_address": target}}, timeout=30)
        assert r.status_code >= 500, r.text
        killed(fstack)
    finally:
        restart(fstack)
    got = fapi.get(f"/1.0/networks/{net}/forwards/{listen}")
    assert got.status_code == 200, got.text  # the record was stored...
    assert f"dnat ip to {target}" in table(f"corral-fwd-{net}")  # ...and its rule is back
    assert fapi.delete(f"/1.0/networks/{net}/forwards/{listen}").status_code == 200
    assert not table(f"corral-fwd-{net}")


def test_acl_change_stored_then_killed(fstack, fapi, world):
    net, acl = world.net, f"{world.prefix}f"
    assert fapi.post("/1.0/network-acls", json={"name": acl}).status_code in (200, 201)
    r = fapi.patch(f"/1.0/networks/{net}", json={"config": {"security.acls": acl}})
    assert r.status_code == 200, r.text
    assert "4444" not in table(f"corral-acl-{net}")
    restart(fstack, "network:acl_stored")
    try:
        r = fapi.put(f"/1.0/network-acls/{acl}", json={"ingress": [
            {"action": "drop", "state": "enabled", "protocol": "tcp",
             "destination_port": "4444"}]}, timeout=30)
        assert r.status_code >= 500, r.text
        killed(fstack)
    finally:
        restart(fstack)
    assert fapi.get(f"/1.0/network-acls/{acl}").json()["metadata"]["ingress"]
    assert "tcp dport 4444 drop" in table(f"corral-acl-{net}")  # nft shows no braces
    r = fapi.patch(f"/1.0/networks/{net}", json={"config": {"security.acls": ""}})
    assert r.status_code == 200, r.text
    assert not table(f"corral-acl-{net}")
    assert fapi.delete(f"/1.0/network-acls/{acl}").status_code == 200
