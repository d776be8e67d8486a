"""Storage pools per member on a 3-node cluster (``make cluster-up``), with the stock client.

The cluster comes up through the Makefile as in tests/test_cluster.py (network namespaces
with a unique prefix), this time WITH its defaults: the ``default`` btrfs pool made by
every member on its own loop file, the bridge, the profile and the busybox image once.
Removed at the end also when a step fails: instances, processes left in the namespaces
(dnsmasq), mounts under the directory, the namespaces and the directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_cluster import (
    Cluster,
    _alive,
    _end,
    _leftovers,
    dnsmasq_args,
    links,
    mounts,
    query,
    wait_states,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="corral-clres-"))
    c = Cluster(base, "cr" + secrets.token_hex(3))
    c.env.pop("CORRAL_BOOTSTRAP", None)  # the defaults are what this module tests
    c.env["CORRAL_CLUSTER_POOL_SIZE"] = "1GiB"
    try:
        c.make("cluster-up", "N=3")
        yield c
    finally:
        for k in (1, 2, 3, 4):  # our instances first, while the services still run
            if not c.node_dir(k).exists():
                continue
            out = c.lxc(k, "list", "-c", "nL", "-f", "csv", check=False).stdout
            for row in out.splitlines():
                if row.endswith(f",node{k}"):
                    c.lxc(k, "delete", "--force", row.split(",")[0], check=False)
        leftovers = _leftovers(c)
        down = c.make("cluster-down", check=False)
        survivors = _alive(leftovers)  # cluster-down stops the nodes' dnsmasq
        _end(survivors)
        left = c.namespaces()
        loops = ""
        for _ in range(20):  # the loop devices go with the last process of a node
            loops = subprocess.run(["losetup", "-a"], capture_output=True,
                                   text=True).stdout
            if str(base) not in loops:
                break
            time.sleep(0.5)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not survivors, f"cluster-down left the nodes' dnsmasq running: {survivors}"
        assert not left, f"namespaces left behind: {left}"
        assert str(base) not in loops, f"loop devices left behind: {loops}"


def seen_by(c: Cluster, k: int, path: Path) -> Path:
    """``path`` as node k's processes see it (through its mount namespace)."""
    return Path(f"/proc/{c.pids(k)[0]}/root") / path.relative_to("/")


def test_default_pool_made_by_every_member_on_its_own_disk(cluster: Cluster) -> None:
    pool = query(cluster, 2, "/1.0/storage-pools/default")
    assert pool["status"] == "Created" and pool["driver"] == "btrfs"
    assert pool["locations"] == ["node1", "node2", "node3"]
    assert "source" not in pool["config"]  # member-specific: shown with ?target=
    devices = set()
    for k in (1, 2, 3):
        mine = query(cluster, 1, f"/1.0/storage-pools/default?target=node{k}")
        assert mine["status"] == "Created" and mine["locations"] == [f"node{k}"]
        src = Path(mine["config"]["source"])
        assert src == cluster.node_dir(k) / "disks" / "default.img" and src.is_file()
        point = str(cluster.node_dir(k) / "storage-pools" / "default")
        mine_mounts = mounts(cluster, k)
        assert point in mine_mounts, f"node{k}'s pool not mounted at {point}"
        devices.add(mine_mounts[point])
        others = [p for p in mine_mounts if p.startswith(str(cluster.base) + "/")
                  and "/storage-pools/" in p and f"/node{k}/" not in p]
        assert not others, f"node{k} mounts another member's pool: {others}"
    assert len(devices) == 3, f"the members share a device: {devices}"
    bad = cluster.lxc(1, "query", "/1.0/storage-pools/default?target=node9", check=False)
    assert bad.returncode != 0 and "not defined on member 'node9'" in bad.stderr


def test_launch_on_another_member(cluster: Cluster) -> None:
    cluster.lxc(1, "launch", "busybox", "cr-c1", "--target", "node2")
    assert cluster.lxc(3, "list", "cr-c1", "-c", "L", "-f", "csv").stdout.strip() == "node2"
    root = Path("storage-pools") / "default" / "containers" / "cr-c1"
    assert seen_by(cluster, 2, cluster.node_dir(2) / root).is_dir()
    assert not seen_by(cluster, 1, cluster.node_dir(1) / root).exists()
    out = cluster.lxc(1, "exec", "cr-c1", "--", "cat", "/etc/hostname").stdout
    assert out.strip() == "cr-c1"


def test_default_network_on_every_member_with_its_own_dhcp_slice(cluster: Cluster) -> None:
    net = query(cluster, 3, "/1.0/networks/corralbr0")
    assert net["status"] == "Created" and net["locations"] == ["node1", "node2", "node3"]
    slices = set()
    for k in (1, 2, 3):
        mine = query(cluster, 1, f"/1.0/networks/corralbr0?target=node{k}")
        assert mine["status"] == "Created"
        assert mine["config"]["ipv4.address"] == net["config"]["ipv4.address"]
        slices.add(mine["config"]["ipv4.dhcp.ranges"])
        links = subprocess.run(["ip", "-n", f"{cluster.prefix}-node{k}", "-br", "link"],
                               capture_output=True, text=True).stdout
        assert "corralbr0" in links and "cvx" in links, links
    assert len(slices) == 3, slices


def test_overlay_joins_containers_on_different_members(cluster: Cluster) -> None:
    """cr-c1 (node2, test_launch_on_another_member) pings cr-c2 (node3) over the VXLAN."""
    cluster.lxc(1, "launch", "busybox", "cr-c2", "--target", "node3")
    addr = ""
    for _ in range(40):
        rows = json.loads(cluster.lxc(1, "list", "cr-c2", "-f", "json").stdout)
        nets = (rows[0].get("state") or {}).get("network") or {}
        addr = next((a["address"] for a in nets.get("eth0", {}).get("addresses", [])
                     if a["family"] == "inet"), "")
        if addr:
            break
        time.sleep(0.5)
    assert addr, "cr-c2 got no IPv4 address from node3's dnsmasq"
    r = cluster.lxc(2, "exec", "cr-c1", "--", "ping", "-c", "2", "-W", "3", addr,
                    check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    cluster.lxc(1, "delete", "--force", "cr-c1", "cr-c2")


def location(c: Cluster, k: int, name: str) -> str:
    return c.lxc(k, "list", name, "-c", "L", "-f", "csv").stdout.strip()


def test_cold_move_with_a_snapshot_then_evacuate_and_restore(cluster: Cluster) -> None:
    """Between namespaced members, through the stock client: a stopped container with a
    snapshot moves to another member (asked on a third), its data and snapshot with it;
    evacuating that member moves it on, running, and restore brings it back."""
    root = Path("storage-pools") / "default" / "containers" / "cr-m1"
    cluster.lxc(1, "launch", "busybox", "cr-m1", "--target", "node1")
    cluster.lxc(1, "exec", "cr-m1", "--", "sh", "-c", "echo one > /root/mark")
    cluster.lxc(1, "snapshot", "cr-m1", "s0")
    cluster.lxc(1, "exec", "cr-m1", "--", "sh", "-c", "echo two > /root/mark")
    refused = cluster.lxc(2, "move", "cr-m1", "--target", "node3", check=False)
    assert refused.returncode != 0 and "stateless" in refused.stderr, refused.stderr
    cluster.lxc(1, "stop", "--force", "cr-m1")
    cluster.lxc(2, "move", "cr-m1", "--target", "node3")
    for k in (1, 2, 3):
        assert location(cluster, k, "cr-m1") == "node3"
    assert seen_by(cluster, 3, cluster.node_dir(3) / root).is_dir()
    assert not seen_by(cluster, 1, cluster.node_dir(1) / root).exists()
    cluster.lxc(1, "start", "cr-m1")
    assert cluster.lxc(2, "exec", "cr-m1", "--", "cat", "/root/mark").stdout.strip() == "two"
    assert "s0" in cluster.lxc(1, "info", "cr-m1").stdout
    wait_address(cluster, "cr-m1")  # node3's dnsmasq answers it
    # evacuate node3: auto mode moves what can move and starts it again where it lands
    cluster.lxc(1, "cluster", "evacuate", "node3", "--force")
    moved_to = location(cluster, 2, "cr-m1")
    assert moved_to in ("node1", "node2"), moved_to
    assert cluster.lxc(1, "list", "cr-m1", "-c", "s", "-f", "csv").stdout.strip() == "RUNNING"
    assert cluster.lxc(1, "exec", "cr-m1", "--", "cat", "/root/mark").stdout.strip() == "two"
    assert not seen_by(cluster, 3, cluster.node_dir(3) / root).exists()
    cluster.lxc(2, "cluster", "restore", "node3", "--force")
    for k in (1, 2, 3):
        assert location(cluster, k, "cr-m1") == "node3"
    cluster.lxc(1, "stop", "--force", "cr-m1")
    cluster.lxc(1, "restore", "cr-m1", "s0")
    cluster.lxc(1, "start", "cr-m1")
    assert cluster.lxc(3, "exec", "cr-m1", "--", "cat", "/root/mark").stdout.strip() == "one"
    cluster.lxc(1, "delete", "--force", "cr-m1")
    for k in (1, 2, 3):
        assert not seen_by(cluster, k, cluster.node_dir(k) / root).exists()


def test_pending_per_member_then_created_everywhere(cluster: Cluster) -> None:
    for k, size in ((1, "1GiB"), (2, "2GiB")):
        cluster.lxc(1, "storage", "create", "crp", "btrfs", f"size={size}",
                    "--target", f"node{k}")
    assert query(cluster, 3, "/1.0/storage-pools/crp")["status"] == "Pending"
    assert not (cluster.node_dir(1) / "disks" / "crp.img").exists()  # nothing made yet
    bad = cluster.lxc(1, "storage", "create", "crp", "btrfs", "--target", "node9",
                      check=False)
    assert bad.returncode != 0 and "not a cluster member" in bad.stderr
    bad = cluster.lxc(1, "storage", "create", "crp", "btrfs", "source=/srv/x", check=False)
    assert bad.returncode != 0 and "cluster member specific" in bad.stderr
    # node3 cannot make its own (a loop file already there): Errored with the reason
    stray = cluster.node_dir(3) / "disks" / "crp.img"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"")
    failed = cluster.lxc(2, "storage", "create", "crp", "btrfs", check=False)
    assert failed.returncode != 0 and "node3" in failed.stderr \
        and "already exists" in failed.stderr
    assert query(cluster, 1, "/1.0/storage-pools/crp")["status"] == "Errored"
    assert query(cluster, 1, "/1.0/storage-pools/crp?target=node3")["status"] == "Errored"
    assert query(cluster, 1, "/1.0/storage-pools/crp?target=node1")["status"] == "Created"
    stray.unlink()
    cluster.lxc(2, "storage", "create", "crp", "btrfs")  # only node3 retries
    assert query(cluster, 3, "/1.0/storage-pools/crp")["status"] == "Created"
    sizes = {k: os.stat(cluster.node_dir(k) / "disks" / "crp.img").st_size for k in (1, 2)}
    assert sizes == {1: 1 << 30, 2: 2 << 30}
    again = cluster.lxc(1, "storage", "create", "crp", "btrfs", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    cluster.lxc(3, "storage", "delete", "crp")
    for k in (1, 2, 3):
        assert not (cluster.node_dir(k) / "disks" / "crp.img").exists()
        assert str(cluster.node_dir(k) / "storage-pools" / "crp") not in mounts(cluster, k)


def test_dir_pool_per_member(cluster: Cluster) -> None:
    cluster.lxc(2, "storage", "create", "crd", "dir")
    for k in (1, 2, 3):
        mine = query(cluster, 3, f"/1.0/storage-pools/crd?target=node{k}")
        own = cluster.node_dir(k) / "storage-pools" / "crd"
        assert mine["status"] == "Created" and mine["config"]["source"] == str(own)
        assert seen_by(cluster, k, own).is_dir()
    cluster.lxc(1, "storage", "delete", "crd")
    for k in (1, 2, 3):
        assert not seen_by(cluster, k, cluster.node_dir(k) / "storage-pools" / "crd").exists()
    gone = cluster.lxc(1, "storage", "show", "crd", check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr


def test_network_pending_per_member_then_created_and_deleted_everywhere(
        cluster: Cluster) -> None:
    for k in (1, 2):
        cluster.lxc(1, "network", "create", "crn", "--target", f"node{k}")
    assert query(cluster, 2, "/1.0/networks/crn")["status"] == "Pending"
    assert "crn " not in links(cluster, 1)  # nothing built yet
    bad = cluster.lxc(1, "network", "create", "crn", "--target", "node9", check=False)
    assert bad.returncode != 0 and "not a cluster member" in bad.stderr
    bad = cluster.lxc(1, "network", "create", "crn", "ipv4.nat=false", "--target", "node2",
                      check=False)
    assert bad.returncode != 0 and "member-specific" in bad.stderr
    bad = cluster.lxc(1, "network", "create", "crn2", "bridge.external_interfaces=eth9",
                      check=False)
    assert bad.returncode != 0 and "cluster member specific" in bad.stderr
    cluster.lxc(3, "network", "create", "crn", "ipv4.nat=false")
    net = query(cluster, 1, "/1.0/networks/crn")
    assert net["status"] == "Created" and net["locations"] == ["node1", "node2", "node3"]
    for k in (1, 2, 3):
        assert "crn " in links(cluster, k) + " "
    again = cluster.lxc(1, "network", "create", "crn", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    renamed = cluster.lxc(1, "network", "rename", "crn", "crn9", check=False)
    assert renamed.returncode != 0 and "not supported" in renamed.stderr
    cluster.lxc(2, "network", "delete", "crn")
    for k in (1, 2, 3):
        assert "crn " not in links(cluster, k), links(cluster, k)


def pool_mount_options(c: Cluster, k: int, pool: str) -> str:
    """The mount options of node k's own mount of ``pool``."""
    point = str(c.node_dir(k) / "storage-pools" / pool)
    with open(f"/proc/{c.pids(k)[0]}/mounts") as f:
        rows = [line.split() for line in f]
    return next(r[3] for r in rows if r[1] == point)


def test_storage_set_reaches_every_member_and_target_only_that_member(
        cluster: Cluster) -> None:
    """``lxc storage set`` without --target: every member remounts its own pool with the
    cluster-wide key; ``size`` is a member's own (--target): only its loop file grows."""
    cluster.lxc(2, "storage", "set", "default",
                "btrfs.mount_options=user_subvol_rm_allowed,compress=zstd")
    for k in (1, 2, 3):
        assert "compress=zstd" in pool_mount_options(cluster, k, "default"), k
    shown = query(cluster, 3, "/1.0/storage-pools/default")["config"]
    assert shown["btrfs.mount_options"] == "user_subvol_rm_allowed,compress=zstd"
    bad = cluster.lxc(1, "storage", "set", "default", "size=2GiB", check=False)
    assert bad.returncode != 0 and "cluster member specific" in bad.stderr, bad.stderr
    bad = cluster.lxc(1, "storage", "set", "default", "btrfs.mount_options=ssd",
                      "--target", "node2", check=False)
    assert bad.returncode != 0 and "member-specific" in bad.stderr, bad.stderr
    cluster.lxc(1, "storage", "set", "default", "size=2GiB", "--target", "node2")
    sizes = {k: os.stat(cluster.node_dir(k) / "disks" / "default.img").st_size
             for k in (1, 2, 3)}
    assert sizes == {1: 1 << 30, 2: 2 << 30, 3: 1 << 30}, sizes
    assert query(cluster, 1, "/1.0/storage-pools/default?target=node2")["config"][
        "size"] == "2GiB"
    assert query(cluster, 1, "/1.0/storage-pools/default?target=node3")["config"][
        "size"] == "1GiB"
    shrink = cluster.lxc(1, "storage", "set", "default", "size=1GiB", "--target",
                         "node2", check=False)
    assert shrink.returncode != 0 and "shrink" in shrink.stderr, shrink.stderr
    cluster.lxc(3, "storage", "set", "default",
                "btrfs.mount_options=user_subvol_rm_allowed,compress=lzo")
    for k in (1, 2, 3):
        assert "compress=lzo" in pool_mount_options(cluster, k, "default"), k


def test_network_set_reaches_every_member_and_target_only_that_member(
        cluster: Cluster) -> None:
    cluster.lxc(2, "network", "set", "corralbr0", "dns.domain=crdom")
    for k in (1, 2, 3):
        assert "--domain=crdom" in dnsmasq_args(cluster, k, "corralbr0"), k
    slices = {k: query(cluster, 1, f"/1.0/networks/corralbr0?target=node{k}")["config"][
        "ipv4.dhcp.ranges"] for k in (1, 2, 3)}
    assert len(set(slices.values())) == 3, slices  # each member keeps its own slice
    bad = cluster.lxc(1, "network", "set", "corralbr0", "bridge.external_interfaces=crx0",
                      check=False)
    assert bad.returncode != 0 and "cluster member specific" in bad.stderr, bad.stderr
    bad = cluster.lxc(1, "network", "set", "corralbr0", "dns.domain=other", "--target",
                      "node3", check=False)
    assert bad.returncode != 0 and "member-specific" in bad.stderr, bad.stderr
    ns = f"{cluster.prefix}-node3"
    subprocess.run(["ip", "-n", ns, "link", "add", "crx0", "type", "veth", "peer", "name",
                    "crx1"], check=True)  # no dummy module in this kernel
    try:
        cluster.lxc(1, "network", "set", "corralbr0", "bridge.external_interfaces=crx0",
                    "--target", "node3")
        link = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "crx0"],
                              capture_output=True, text=True).stdout
        assert "master corralbr0" in link, link
        mine = query(cluster, 1, "/1.0/networks/corralbr0?target=node3")["config"]
        assert mine["bridge.external_interfaces"] == "crx0"
        assert mine["ipv4.dhcp.ranges"] == slices[3]
        assert "bridge.external_interfaces" not in query(
            cluster, 1, "/1.0/networks/corralbr0")["config"]
        assert "bridge.external_interfaces" not in query(
            cluster, 1, "/1.0/networks/corralbr0?target=node2")["config"]
        cluster.lxc(1, "network", "unset", "corralbr0", "bridge.external_interfaces",
                    "--target", "node3")
        link = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "crx0"],
                              capture_output=True, text=True).stdout
        assert "master corralbr0" not in link, link
    finally:
        subprocess.run(["ip", "-n", ns, "link", "del", "crx0"], check=False)
    cluster.lxc(3, "network", "unset", "corralbr0", "dns.domain")
    for k in (1, 2, 3):
        assert "--domain=crdom" not in dnsmasq_args(cluster, k, "corralbr0"), k


def test_errored_pool_deleted_keeps_what_was_not_ours(cluster: Cluster) -> None:
    """A pool Errored on one member is deleted on the others; the member's file that made
    it fail (not made by us) is left alone."""
    stray = cluster.node_dir(2) / "disks" / "crq.img"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not ours")
    failed = cluster.lxc(1, "storage", "create", "crq", "btrfs", "size=1GiB", check=False)
    assert failed.returncode != 0 and "node2" in failed.stderr
    assert (cluster.node_dir(1) / "disks" / "crq.img").exists()
    cluster.lxc(3, "storage", "delete", "crq")
    assert stray.read_bytes() == b"not ours"
    for k in (1, 3):
        assert not (cluster.node_dir(k) / "disks" / "crq.img").exists()
        assert str(cluster.node_dir(k) / "storage-pools" / "crq") not in mounts(cluster, k)
    gone = cluster.lxc(1, "storage", "show", "crq", check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr
    stray.unlink()


def test_a_member_joining_later_makes_its_own_pool_and_bridge(cluster: Cluster) -> None:
    """node4 joins after the defaults: its storage and network services make its own pool
    (its loop file) and bridge (a free DHCP slice) at their start; a container on node4
    reaches one on node2 over the overlay."""
    token = cluster.lxc(1, "cluster", "add", "node4").stdout.strip().splitlines()[-1]
    cluster.make("cluster-join", f"TOKEN={token}")
    pool = query(cluster, 1, "/1.0/storage-pools/default?target=node4")
    assert pool["status"] == "Created"
    assert pool["config"]["source"] == str(cluster.node_dir(4) / "disks" / "default.img")
    slices = {query(cluster, 1, f"/1.0/networks/corralbr0?target=node{k}")["config"][
        "ipv4.dhcp.ranges"] for k in (1, 2, 3, 4)}
    assert len(slices) == 4, slices
    assert "cvx" in links(cluster, 4)
    # the members already there add node4 to their flood lists by themselves (no
    # network restart): node2's guest finds node4's by a broadcast ARP
    node4 = str(cluster.node_dir(4))  # its address: the member's url
    url = next(m["url"] for m in query(cluster, 1, "/1.0/cluster/members?recursion=1")
               if m["server_name"] == "node4")
    addr4 = url.split("//")[1].rsplit(":", 1)[0]
    dev = next(w.split("@")[0] for w in links(cluster, 2).split() if w.startswith("cvx"))
    fdb = ""
    for _ in range(30):
        fdb = subprocess.run(["bridge", "-n", f"{cluster.prefix}-node2", "fdb", "show",
                              "dev", dev], capture_output=True, text=True).stdout
        if f"00:00:00:00:00:00 dst {addr4} " in fdb + " ":
            break
        time.sleep(0.5)
    assert f"00:00:00:00:00:00 dst {addr4} " in fdb + " ", (node4, fdb)
    cluster.lxc(1, "launch", "busybox", "cr-j2", "--target", "node2")
    cluster.lxc(1, "launch", "busybox", "cr-j4", "--target", "node4")
    addr = wait_address(cluster, "cr-j4")
    r = cluster.lxc(1, "exec", "cr-j2", "--", "ping", "-c", "2", "-W", "3", addr,
                    check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    cluster.lxc(1, "delete", "--force", "cr-j2", "cr-j4")


def wait_address(c: Cluster, name: str) -> str:
    for _ in range(40):
        rows = json.loads(c.lxc(1, "list", name, "-f", "json").stdout)
        nets = (rows[0].get("state") or {}).get("network") or {}
        addr = next((a["address"] for a in nets.get("eth0", {}).get("addresses", [])
                     if a["family"] == "inet"), "")
        if addr:
            return addr
        time.sleep(0.5)
    raise AssertionError(f"{name} got no IPv4 address")


def test_a_killed_member_comes_back_with_its_pool_mounted_once(cluster: Cluster) -> None:
    """The node's mount namespace outlives its processes (cluster-kill, then cluster-up):
    the pool is found mounted, not mounted a second time, and used again."""
    cluster.make("cluster-kill", "NODE=2")
    # as tests/test_cluster.py: back once the others see it OFFLINE (a restart at once
    # raced JetStream's new leaders: the service's first stream request timed out)
    wait_states(cluster, 1, {"node1": "ONLINE", "node2": "OFFLINE", "node3": "ONLINE",
                             "node4": "ONLINE"}, timeout=45)
    cluster.make("cluster-up", "N=4")  # node4 joined (test above)
    point = str(cluster.node_dir(2) / "storage-pools" / "default")
    with open(f"/proc/{cluster.pids(2)[0]}/mounts") as f:
        assert [line.split()[1] for line in f].count(point) == 1
    assert query(cluster, 1, "/1.0/storage-pools/default?target=node2")["status"] == "Created"
    cluster.lxc(1, "launch", "busybox", "cr-k2", "--target", "node2")
    assert cluster.lxc(1, "exec", "cr-k2", "--", "true").returncode == 0
    cluster.lxc(1, "delete", "--force", "cr-k2")
