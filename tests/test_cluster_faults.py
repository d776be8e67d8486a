"""A member killed while making its part of a cluster-wide pool or network (``make
cluster-up``, 3 namespaced nodes, the stock client).

Each node runs one process (``CORRAL_MODE=single``); ``CORRAL_FAULT`` names points with
the node in them (``pool:member_made:node3``: node3's storage service dies right after
its pool is formatted and mounted, before it answers), so the whole cluster starts with
them armed and only that node dies there. As LXD: the member ends Errored (here within
seconds: the coordinator sees the member's process gone), the pool or network Errored,
the other members' parts whole; the node comes back (cluster-up) with nothing half made
beyond what the record says, and the same create again finishes it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from services.network import overlay
from tests.test_cluster import Cluster, alive
from tests.test_cluster_resources import (
    _alive,
    _end,
    _leftovers,
    dnsmasq_args,
    links,
    mounts,
    query,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

FAULTS = "pool:member_made:node3,network:member_made:node2"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="corral-clflt-"))
    c = Cluster(base, "cf" + secrets.token_hex(3))
    c.env["CORRAL_FAULT"] = FAULTS
    try:
        c.make("cluster-up", "N=3")
        c.env.pop("CORRAL_FAULT")  # a node brought back runs without them
        yield c
    finally:
        leftovers = _leftovers(c)
        down = c.make("cluster-down", check=False)
        _end(_alive(leftovers))
        left = c.namespaces()
        for _ in range(20):  # the loop devices go with the last process of a node
            if str(base) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                               text=True).stdout:
                break
            time.sleep(0.5)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not left, f"namespaces left behind: {left}"


def corral_running(c: Cluster, k: int) -> bool:
    """Whether a process of node k other than its nats-server runs."""
    for pid in c.pids(k):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"nats-server" not in cmd and alive(pid):
            return True
    return False


def wait_dead(c: Cluster, k: int, timeout: float = 30) -> None:
    """Node k's corral process died at its fault point."""
    deadline = time.monotonic() + timeout
    while corral_running(c, k):
        assert time.monotonic() < deadline, f"node{k}'s corral process still runs"
        time.sleep(0.2)


def bring_back(c: Cluster, k: int) -> None:
    wait_dead(c, k)
    c.make("cluster-up", "N=3")
    deadline = time.monotonic() + 60
    while c.lxc(k, "info", check=False).returncode != 0:
        assert time.monotonic() < deadline, f"node{k} did not come back"
        time.sleep(0.5)


def test_storage_killed_during_a_cluster_wide_pool_create(cluster: Cluster) -> None:
    started = time.monotonic()
    failed = cluster.lxc(1, "storage", "create", "fp", "btrfs", "size=1GiB", check=False)
    assert failed.returncode != 0 and "node3" in failed.stderr, failed.stderr
    assert "stopped" in failed.stderr, failed.stderr
    assert time.monotonic() - started < 60  # the process watch, not the 120 s timeout
    assert query(cluster, 1, "/1.0/storage-pools/fp")["status"] == "Errored"
    assert query(cluster, 2, "/1.0/storage-pools/fp?target=node3")["status"] == "Errored"
    for k in (1, 2):  # the others' parts are whole
        assert query(cluster, 1, f"/1.0/storage-pools/fp?target=node{k}")[
            "status"] == "Created"
        assert (cluster.node_dir(k) / "disks" / "fp.img").is_file()
        assert str(cluster.node_dir(k) / "storage-pools" / "fp") in mounts(cluster, k)
    img3 = cluster.node_dir(3) / "disks" / "fp.img"
    assert img3.is_file()  # node3 died with its loop file made and mounted
    bring_back(cluster, 3)
    # back: what the record does not name as node3's is undone
    assert not img3.exists()
    assert str(cluster.node_dir(3) / "storage-pools" / "fp") not in mounts(cluster, 3)
    assert not list((cluster.node_dir(3) / "journal").glob("pool-member-*"))
    assert str(img3) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                           text=True).stdout
    cluster.lxc(2, "storage", "create", "fp", "btrfs", "size=1GiB")  # as LXD: again
    assert query(cluster, 3, "/1.0/storage-pools/fp")["status"] == "Created"
    assert img3.is_file()
    assert str(cluster.node_dir(3) / "storage-pools" / "fp") in mounts(cluster, 3)
    cluster.lxc(3, "storage", "delete", "fp")
    for k in (1, 2, 3):
        assert not (cluster.node_dir(k) / "disks" / "fp.img").exists()
        assert str(cluster.node_dir(k) / "storage-pools" / "fp") not in mounts(cluster, k)


def test_network_killed_during_a_cluster_wide_network_create(cluster: Cluster) -> None:
    failed = cluster.lxc(1, "network", "create", "fnet", check=False)
    assert failed.returncode != 0 and "node2" in failed.stderr, failed.stderr
    assert query(cluster, 3, "/1.0/networks/fnet")["status"] == "Errored"
    mine = query(cluster, 1, "/1.0/networks/fnet?target=node2")
    assert mine["status"] == "Errored"
    slice2 = mine["config"]["ipv4.dhcp.ranges"]  # kept for when it comes back
    for k in (1, 3):
        assert query(cluster, 1, f"/1.0/networks/fnet?target=node{k}")[
            "status"] == "Created"
        assert "fnet " in links(cluster, k) + " "
        dnsmasq_args(cluster, k, "fnet")
    bring_back(cluster, 2)
    # node2 builds the network it has an Errored entry for, with its own slice
    deadline = time.monotonic() + 30
    while query(cluster, 1, "/1.0/networks/fnet?target=node2")["status"] != "Created":
        assert time.monotonic() < deadline, "node2 did not rebuild its part"
        time.sleep(0.5)
    start, end = slice2.split("-")
    assert any(a.startswith(f"--dhcp-range={start},{end},")
               for a in dnsmasq_args(cluster, 2, "fnet"))  # exactly one dnsmasq
    cluster.lxc(3, "network", "create", "fnet")  # as LXD: the same create finishes it
    assert query(cluster, 2, "/1.0/networks/fnet")["status"] == "Created"
    cluster.lxc(2, "network", "delete", "fnet")
    for k in (1, 2, 3):
        assert "fnet " not in links(cluster, k) + " ", links(cluster, k)


def test_a_removed_member_leaves_the_flood_lists(cluster: Cluster) -> None:
    """``lxc cluster remove node3 --force``: node1's and node2's bridges stop flooding to
    node3's address without a network restart. Last in this module, after the two above
    (they bring node2 and node3 back without their fault points; node3 is gone after)."""
    cluster.lxc(1, "network", "create", "fov")
    members = query(cluster, 1, "/1.0/cluster/members?recursion=1")
    addr3 = next(m["url"] for m in members if m["server_name"] == "node3"
                 ).split("//")[1].rsplit(":", 1)[0]

    def flood(k: int) -> str:
        return subprocess.run(["bridge", "-n", f"{cluster.prefix}-node{k}", "fdb", "show",
                               "dev", overlay.device("fov")], capture_output=True,
                              text=True).stdout

    for k in (1, 2):
        assert f"00:00:00:00:00:00 dst {addr3} " in flood(k) + " "
    cluster.lxc(1, "cluster", "remove", "--force", "--yes", "node3")
    deadline = time.monotonic() + 30
    for k in (1, 2):
        while f"00:00:00:00:00:00 dst {addr3} " in flood(k) + " ":
            assert time.monotonic() < deadline, (f"node{k} still floods to node3", flood(k))
            time.sleep(0.5)
    assert "fov " in links(cluster, 1) + " "  # the network itself untouched
