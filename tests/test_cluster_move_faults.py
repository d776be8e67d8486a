"""A cold move between cluster members whose gateway is killed (SIGKILL) mid-move.

The gateway that runs ``POST /1.0/instances/<c>?target=node2`` journals each step
(services/gateway/move_journal.py) and dies at a fault point (shared/faults.py): once both
ends of the transfer run (back: the target never had it whole), after the transfer, after
the source's delete, before the rename (forward: the target has it whole). Started again,
that gateway ends the move: the instance exists once, under its name, at one location,
with its snapshot and data, started again after ``--stateless``; no temporary name, no
LXC directory left on either member, and the move's operation ended saying how.
"""

from __future__ import annotations

import json
import signal

import pytest

from .cluster_stack import two_node_fixtures
from .stack import wait_for
from .test_cluster_move import make, names, read_mark, snapshots, where
from .world import lxc

pytestmark = pytest.mark.timeout(900)


cluster, world = two_node_fixtures()


def restart_gateway(node, fault: str | None = None) -> None:
    node.stack.stop("gateway")
    env = node.stack.env
    node.stack.env = {**env, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        node.stack.start("gateway")
    finally:
        node.stack.env = env
    wait_for(node.stack.ready, 60, what=f"{node.name}'s gateway")


def leftovers(node, c: str) -> list[str]:
    """LXC directories of ``c`` or its temporary copies on ``node``."""
    base = node.stack.dir / "lxc"
    return sorted(p.name for p in base.iterdir() if p.name.startswith(c)) \
        if base.exists() else []


@pytest.mark.parametrize("point,forward,running", [
    ("cluster_move:transfer_started", False, False),
    ("cluster_move:after_transfer", True, False),
    ("cluster_move:after_delete", True, False),
    ("cluster_move:before_rename", True, False),
    ("cluster_move:before_rename", True, True),  # --stateless: started again on node2
])
def test_gateway_killed_mid_move(cluster, world, point, forward, running):
    (n1, n2), _ = cluster
    c = world.name(f"g{point.rsplit(':', 1)[1][:3]}{'r' if running else ''}")
    make(world, n1, c, "node1")  # node1 -> node2, asked of node1's gateway
    if running:
        lxc(n1.stack, "start", c)
    restart_gateway(n1, point)
    try:
        r = n1.api.post(f"/1.0/instances/{c}?target=node2",
                        json={"name": c, "migration": True, "live": False})
        assert r.status_code == 202, r.text
        op_id = r.json()["metadata"]["id"]
        proc = n1.stack.procs["gateway"]
        proc.wait(120)
        assert proc.returncode == -signal.SIGKILL, "the fault point was not reached"
    finally:
        restart_gateway(n1)

    def ended() -> dict | None:
        op = n2.api.get(f"/1.0/operations/{op_id}").json().get("metadata") or {}
        return op if "the move was finished" in (op.get("err") or "") else None

    wait_for(ended, 120, interval=0.5, what="the restarted gateway to end the move")
    op = ended()
    assert op["status"] == "Failure", op
    assert ("moved forward" if forward else "moved back") in op["err"], op
    status = "Running" if running else "Stopped"
    home, away = (n2, n1) if forward else (n1, n2)
    for node in (n1, n2):
        assert where(node, c) == (status, home.name), point
        assert not any("-moving-" in n for n in names(node))
    assert leftovers(home, c) == [c] and leftovers(away, c) == []
    assert snapshots(n1, c) == ["s0"]
    if not running:
        lxc(n1.stack, "start", c)
    assert read_mark(n1, c) == "second"
    lxc(n1.stack, "delete", c, "--force")
    for node in (n1, n2):
        assert c not in json.dumps(names(node))


# -- a VM's live move whose gateway dies once the guest runs on the target ----------------

@pytest.fixture(scope="module")
def vcluster(tmp_path_factory):
    """Two namespaced nodes (as tests/test_vm_live_move.py) whose gateways die at
    ``vm_live_move:after_send`` (a node runs every service in one process, so its
    instance service dies with it, as a member's crash)."""
    import os
    import secrets
    import shutil
    import tempfile
    from pathlib import Path

    from shared.image.build_vm import build_busybox_vm
    from tests.test_cluster import Cluster
    from tests.test_vm_live_move import BRIDGE, KERNEL_CACHE

    if shutil.which("libvirtd") is None or shutil.which("qemu-system-x86_64") is None \
            or shutil.which("lxc") is None or os.geteuid() != 0:
        pytest.skip("needs root, libvirtd, qemu-system-x86_64 and lxd-client")
    base = Path(tempfile.mkdtemp(prefix="corral-vmf-"))
    c = Cluster(base, "vf" + secrets.token_hex(3))
    c.env.pop("CORRAL_BOOTSTRAP", None)
    c.env.update(CORRAL_CLUSTER_POOL_SIZE="1GiB", CORRAL_DEFAULT_NETWORK=BRIDGE,
                 CORRAL_VMS="1", CORRAL_FAULT="vm_live_move:after_send")
    try:
        c.make("cluster-up", "N=2")
        meta, rootfs = build_busybox_vm(tmp_path_factory.mktemp("vmimg"),
                                        cache_dir=KERNEL_CACHE, size_mib=64)
        c.lxc(1, "image", "import", str(meta), str(rootfs), "--alias", "vfvm")
        yield c
    finally:
        c.env.pop("CORRAL_FAULT", None)
        for k in (1, 2):
            if c.node_dir(k).exists():
                c.lxc(k, "delete", "--force", "vf-v1", check=False)
        down = c.make("cluster-down", check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def test_gateway_killed_after_a_vm_live_send_keeps_the_guest(vcluster):
    """The guest runs on node2 when node1's gateway dies: started again, node1 finishes
    the move (the record says node2, node1's copy goes) and the guest kept running (its
    boot_id and memory). Then an evacuation of node2 in live-migrate mode moves it live
    (back to node1), and restore returns it live. node2's services are killed too before
    the restart: their start keeps the guest the journal says was sent there."""
    import os
    import time

    from tests.test_vm_live_move import in_guest, libvirt_domains, location, volumes_on, wait_agent

    c, vm = vcluster, "vf-v1"
    c.lxc(1, "launch", "vfvm", vm, "--vm", "--target", "node1", "-c", "limits.memory=128MiB",
          "-c", "limits.cpu=1", "-c", "migration.stateful=true")
    wait_agent(c, vm)
    boot_id = in_guest(c, vm, "cat", "/proc/sys/kernel/random/boot_id")
    in_guest(c, vm, "sh", "-c", "echo alive > /dev/shm/marker && echo disk > /root/m && sync")
    pid = int((c.node_dir(1) / "run" / "all.pid").read_text())
    r = c.lxc(1, "move", vm, "--target", "node2", check=False)
    assert r.returncode != 0, r.stdout
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read(
            ).rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "node1's process was not killed at the point"
        time.sleep(0.2)
    # node2's services die too: their start must keep the guest the journal says was sent
    # there (its record still says node1 until node1's gateway finishes the move)
    pid2 = int((c.node_dir(2) / "run" / "all.pid").read_text())
    os.kill(pid2, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid2}") and open(f"/proc/{pid2}/stat").read(
            ).rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    c.env.pop("CORRAL_FAULT", None)
    c.make("cluster-up")
    deadline = time.monotonic() + 120
    while location(c, vm, 2) != ("RUNNING", "node2"):
        assert time.monotonic() < deadline, location(c, vm, 2)
        time.sleep(1)
    assert location(c, vm, 1) == ("RUNNING", "node2")
    assert in_guest(c, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert in_guest(c, vm, "cat", "/dev/shm/marker") == "alive"
    assert in_guest(c, vm, "cat", "/root/m") == "disk"
    deadline = time.monotonic() + 60
    while vm in libvirt_domains(c, 1) or volumes_on(c, 1):
        assert time.monotonic() < deadline, (libvirt_domains(c, 1), volumes_on(c, 1))
        time.sleep(1)
    assert volumes_on(c, 2) == [vm]

    c.lxc(1, "query", "--wait", "-X", "POST", "/1.0/cluster/members/node2/state", "--data",
          json.dumps({"action": "evacuate", "mode": "live-migrate"}))
    assert location(c, vm) == ("RUNNING", "node1")
    assert in_guest(c, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    c.lxc(1, "cluster", "restore", "node2", "--force")
    assert location(c, vm) == ("RUNNING", "node2")
    assert in_guest(c, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert in_guest(c, vm, "cat", "/dev/shm/marker") == "alive"
