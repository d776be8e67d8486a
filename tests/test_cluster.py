"""A 3-node cluster on this machine (``make cluster-up``), seen through the stock client.

The module brings the nodes up once, through the Makefile targets users run, in network
namespaces named with a unique prefix, and removes everything at the end (also when a
step fails): processes, namespaces (with their veths and the hub), the directory.
The offline threshold is short here (CORRAL_CLUSTER_OFFLINE_THRESHOLD) so a killed node
turns OFFLINE in seconds; it stays above the ~10 s a JetStream stream needs to elect a new
leader when its leader's node dies, so live nodes never blink OFFLINE meanwhile.

The same cluster also serves the tests of a member killed while making its part of a
cluster-wide pool or network (they were tests/test_cluster_faults.py, which started a
3-node cluster of its own, ~35 s): ``CORRAL_FAULT`` names points with the node in them
(``pool:member_made:node3``: node3's storage service dies right after its pool is
formatted and mounted, before it answers), so the cluster starts with them armed and only
that node dies there, only on a pool or network create (the membership tests before them
make none). As LXD: the member ends Errored (here within seconds: the coordinator sees
the member's process gone), the pool or network Errored, the other members' parts whole;
the node comes back (cluster-up, without the faults) with nothing half made beyond what
the record says, and the same create again finishes it. The tests run in file order:
the fault tests come before anything restarts node2 or node3, the removal of node3 last.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from services.network import overlay
from tests.world import lxc_conf

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)  # the venv running the tests (a worktree has none)
THRESHOLD = 14
# Armed from the cluster's start; only a pool / network create reaches them.
FAULTS = "pool:member_made:node3,network:member_made:node2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")


class Cluster:
    def __init__(self, base: Path, prefix: str) -> None:
        self.base = base
        self.prefix = prefix
        self.env = {**os.environ, "CORRAL_DIR": str(base), "CORRAL_CLUSTER_PREFIX": prefix,
                    "CORRAL_MODE": "single", "CORRAL_SKIP_INSTALL": "1",
                    "CORRAL_CLUSTER_OFFLINE_THRESHOLD": str(THRESHOLD),
                    "CORRAL_CLUSTER_HEARTBEAT": "1", "CORRAL_UP_TIMEOUT": "90",
                    "CORRAL_BOOTSTRAP": "0",  # no default pool/bridge/image: membership only
                    "LXD_CONF": lxc_conf(base / "lxc-conf"),
                    # the nodes run this checkout's code with the venv running the tests
                    # (a git worktree has no .venv of its own)
                    "CORRAL_VENV": os.environ.get("CORRAL_VENV", str(PYTHON.parent.parent)),
                    "PYTHONPATH": str(REPO)}
        for var in ("CORRAL_NATS_URL", "CORRAL_NATS_CREDENTIALS", "CORRAL_CONFIG",
                    "CORRAL_NODE", "CORRAL_CLUSTER", "CORRAL_KV_REPLICAS"):
            self.env.pop(var, None)

    def make(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["make", "-s", "-C", str(REPO), *args], env=self.env,
                           capture_output=True, text=True, timeout=180)
        if check:
            assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-6000:])
        return r

    def node_dir(self, k: int) -> Path:
        return self.base / "cluster" / f"node{k}"

    def lxc(self, k: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["lxc", *args], env={**self.env, "LXD_DIR": str(self.node_dir(k))},
                           capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, (k, args, r.stdout, r.stderr)
        return r

    def states(self, k: int) -> dict[str, str]:
        """``lxc cluster list`` on node k: member name -> STATE."""
        out = self.lxc(k, "cluster", "list", "-f", "csv").stdout
        return {row.split(",")[0]: row.split(",")[6] for row in out.splitlines() if row}

    def in_node(self, k: int, code: str, *args: str, timeout: float = 60
                ) -> subprocess.CompletedProcess:
        """Python ``code`` inside node k's network namespace (its NATS is on its loopback)."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.prefix}-node{k}", "--", str(PYTHON), "-c",
             code, str(self.base / "cluster" / "credentials" / "admin.json"), *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def namespaces(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines()
                if line.startswith(f"{self.prefix}-")]

    def pids(self, k: int) -> list[int]:
        return [int(p.read_text().strip()) for p in (self.node_dir(k) / "run").glob("*.pid")]


# A JetStream client as the admin user (argv[1]: its credentials).
CONNECT = """
import asyncio, json, sys, time
import nats
async def connect():
    c = json.load(open(sys.argv[1]))
    return await nats.connect("nats://127.0.0.1:4222", user=c["user"],
                              password=c["password"], inbox_prefix=c["inbox_prefix"])
"""
REPLICAS = CONNECT + """
async def main():
    nc = await connect()
    print(json.dumps({s.config.name: s.config.num_replicas
                      for s in await nc.jetstream().streams_info()}))
    await nc.close()
asyncio.run(main())
"""
# Put argv[2]=argv[3] in server_config, retrying while JetStream elects new leaders (up to
# 30 s: nats-server takes ~4-12 s); prints the seconds it took.
KV_PUT = CONNECT + """
async def main():
    nc = await connect()
    start = time.monotonic()
    while True:
        try:  # the meta leader, as the stream's, may have been on the dead node
            kv = await nc.jetstream(timeout=2).key_value("server_config")
            await kv.put(sys.argv[2], sys.argv[3].encode())
            break
        except Exception:
            if time.monotonic() - start > 30:
                raise
            await asyncio.sleep(0.5)
    print(time.monotonic() - start)
    await nc.close()
asyncio.run(main())
"""
KV_GET = CONNECT + """
async def main():
    nc = await connect()
    kv = await nc.jetstream().key_value("server_config")
    print((await kv.get(sys.argv[2])).value.decode())
    await nc.close()
asyncio.run(main())
"""


def _leftovers(c: Cluster) -> list[int]:
    """The dnsmasq processes the nodes' network services started: found in the nodes'
    namespaces before cluster-down deletes those (and stops them)."""
    found = []
    for k in (1, 2, 3, 4):
        pids = subprocess.run(["ip", "netns", "pids", f"{c.prefix}-node{k}"],
                              capture_output=True, text=True).stdout.split()
        for pid in map(int, pids):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "dnsmasq" in cmd and str(c.base) in cmd:
                found.append(pid)
    return found


def _alive(pids: list[int], wait: float = 5.0) -> list[int]:
    """Those of ``pids`` still running after ``wait`` seconds."""
    def running(pid: int) -> bool:
        try:
            return b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    deadline = time.monotonic() + wait
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _end(pids: list[int]) -> None:
    """End them by PID (the nodes' mounts go with their mount namespaces, the loop
    devices with the mounts)."""
    for pid in pids:
        try:
            os.kill(pid, 15)
        except OSError:
            pass


def query(c: Cluster, k: int, path: str) -> dict:
    return json.loads(c.lxc(k, "query", path).stdout)


def mounts(c: Cluster, k: int) -> dict[str, str]:
    """Node k's mounts (its processes have a mount namespace of their own, as a host of its
    own would): mount point -> source device."""
    pid = c.pids(k)[0]
    with open(f"/proc/{pid}/mounts") as f:
        return {line.split()[1]: line.split()[0] for line in f}


def links(c: Cluster, k: int) -> str:
    return subprocess.run(["ip", "-n", f"{c.prefix}-node{k}", "-br", "link"],
                          capture_output=True, text=True).stdout


def dnsmasq_args(c: Cluster, k: int, network: str) -> list[str]:
    """The command line of node k's dnsmasq for ``network`` (one, or the test fails)."""
    found = []
    for pid in subprocess.run(["ip", "netns", "pids", f"{c.prefix}-node{k}"],
                              capture_output=True, text=True).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "dnsmasq" in argv[0] and f"--interface={network}" in argv:
            found.append(argv)
    assert len(found) == 1, f"node{k}: {len(found)} dnsmasq for {network}"
    return found[0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="corral-cluster-"))
    c = Cluster(base, "ct" + secrets.token_hex(3))
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


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_states(c: Cluster, k: int, want: dict[str, str], timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        seen = c.states(k)
        if seen == want:
            return
        time.sleep(0.5)
    raise AssertionError(f"node{k} sees {seen}, expected {want}")


def test_cluster_list_from_every_node(cluster: Cluster) -> None:
    online = {"node1": "ONLINE", "node2": "ONLINE", "node3": "ONLINE"}
    for k in (1, 2, 3):
        assert cluster.states(k) == online
    shown = cluster.lxc(2, "cluster", "show", "node3").stdout
    assert "server_name: node3" in shown and "status: Online" in shown
    assert "url: https://10." in shown and "- database" in shown
    info = json.loads(cluster.lxc(3, "query", "/1.0").stdout)
    assert info["environment"]["server_clustered"] is True
    assert info["environment"]["server_name"] == "node3"
    assert json.loads(cluster.lxc(1, "query", "/1.0/cluster").stdout) == {
        "server_name": "node1", "enabled": True, "member_config": []}
    missing = cluster.lxc(1, "cluster", "show", "node9", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_member_config_is_kept_by_the_heartbeats(cluster: Cluster) -> None:
    """`lxc cluster set/edit` as LXD (placement reads scheduler.instance and groups)."""
    cluster.lxc(1, "cluster", "set", "node2", "scheduler.instance", "manual")
    bad = cluster.lxc(1, "cluster", "set", "node2", "scheduler.instance", "nope", check=False)
    assert bad.returncode != 0 and "Invalid value 'nope'" in bad.stderr
    bad = cluster.lxc(1, "cluster", "set", "node2", "bogus.key", "1", check=False)
    assert bad.returncode != 0 and "Invalid member config key" in bad.stderr
    edit = ("description: rack seven\nfailure_domain: rack7\nconfig: {}\n"
            "groups:\n- default\n- fast\n")
    r = subprocess.run(["lxc", "cluster", "edit", "node3"], input=edit, text=True,
                       capture_output=True, env={**cluster.env,
                                                 "LXD_DIR": str(cluster.node_dir(1))})
    assert r.returncode == 0, r.stderr
    time.sleep(2.5)  # two heartbeats of node2 and node3 later
    assert cluster.lxc(3, "cluster", "get", "node2", "scheduler.instance").stdout.strip() \
        == "manual"
    shown = cluster.lxc(2, "cluster", "show", "node3").stdout
    assert "failure_domain: rack7" in shown and "- fast" in shown and "rack seven" in shown
    cluster.lxc(1, "cluster", "unset", "node2", "scheduler.instance")
    assert "scheduler.instance" not in cluster.lxc(1, "cluster", "show", "node2").stdout
    assert cluster.lxc(1, "cluster", "set", "node9", "user.x", "1", check=False).returncode


def test_members_carry_resources_for_placement(cluster: Cluster) -> None:
    code = CONNECT + """
from shared import codec
from shared.cluster import Member
async def main():
    nc = await connect()
    kv = await nc.jetstream().key_value("members")
    e = await kv.get("node2")
    print(Member.model_validate(codec.decode(e.value)).model_dump_json())
    await nc.close()
asyncio.run(main())
"""
    r = cluster.in_node(1, code)
    assert r.returncode == 0, r.stderr
    member = json.loads(r.stdout)
    assert member["name"] == "node2" and member["resources"]["cpus"] >= 1
    assert 0 < member["resources"]["memory_free"] <= member["resources"]["memory_total"]


def test_every_bucket_stream_and_store_has_three_replicas(cluster: Cluster) -> None:
    r = cluster.in_node(1, REPLICAS)
    assert r.returncode == 0, r.stderr
    replicas = json.loads(r.stdout)
    assert {"KV_members", "KV_instances", "KV_operations", "CORRAL_EVENTS"} <= set(replicas)
    assert set(replicas.values()) == {3}, replicas


# -- a member killed while making its part of a cluster-wide pool or network ----------


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


def test_a_killed_node_goes_offline_and_comes_back(cluster: Cluster) -> None:
    pids = cluster.pids(3)
    assert len(pids) == 2  # nats + corral-all
    cluster.make("cluster-kill", "NODE=3")
    for pid in pids:
        assert not alive(pid), f"pid {pid} of node3 survived"
    # The bus stays writable with one NATS server of three gone (within a leader election).
    r = cluster.in_node(1, KV_PUT, "user.probe", "written-with-node3-down")
    assert r.returncode == 0, r.stderr
    r = cluster.in_node(2, KV_GET, "user.probe")
    assert r.stdout.strip() == "written-with-node3-down", r.stderr
    want = {"node1": "ONLINE", "node2": "ONLINE", "node3": "OFFLINE"}
    wait_states(cluster, 1, want)
    wait_states(cluster, 2, want)
    message = cluster.lxc(1, "cluster", "show", "node3").stdout
    assert "No heartbeat for" in message
    # cluster-up starts only what is missing: node1's processes are the same ones.
    before = sorted(cluster.pids(1))
    cluster.make("cluster-up")
    assert sorted(cluster.pids(1)) == before
    online = {"node1": "ONLINE", "node2": "ONLINE", "node3": "ONLINE"}
    for k in (1, 2, 3):
        wait_states(cluster, k, online, timeout=30)


def test_a_new_node_joins_with_a_token(cluster: Cluster) -> None:
    bad = cluster.lxc(1, "cluster", "add", "node2", check=False)
    assert bad.returncode != 0 and "already has a member" in bad.stderr
    # A revoked token admits nobody.
    revoked = cluster.lxc(1, "cluster", "add", "node4").stdout.strip().splitlines()[-1]
    assert "node4" in cluster.lxc(2, "cluster", "list-tokens", "-f", "csv").stdout
    cluster.lxc(1, "cluster", "revoke-token", "node4")
    r = cluster.make("cluster-join", f"TOKEN={revoked}", check=False)
    assert r.returncode != 0 and "No matching cluster join operation" in r.stderr
    assert not (cluster.node_dir(4)).exists()
    token = cluster.lxc(1, "cluster", "add", "node4").stdout.strip().splitlines()[-1]
    cluster.make("cluster-join", f"TOKEN={token}")
    four = {f"node{k}": "ONLINE" for k in (1, 2, 3, 4)}
    wait_states(cluster, 4, four, timeout=20)
    wait_states(cluster, 1, four, timeout=20)
    assert cluster.lxc(1, "cluster", "list-tokens", "-f", "csv").stdout.strip() == ""
    again = cluster.make("cluster-join", f"TOKEN={token}", check=False)  # single use
    assert again.returncode != 0 and "No matching" in again.stderr



def test_a_standalone_server_is_not_clustered(api) -> None:  # type: ignore[no-untyped-def]
    """Without CORRAL_CLUSTER (the session's stack) the answers are a standalone LXD's."""
    r = api.get("/1.0/cluster")
    assert r.status_code == 200
    assert r.json()["metadata"] == {"server_name": "", "enabled": False, "member_config": []}
    assert api.get("/1.0").json()["metadata"]["environment"]["server_clustered"] is False
    r = api.get("/1.0/cluster/members")
    assert r.status_code == 400 and "isn't part of a cluster" in r.json()["error"]
    assert "clustering" in api.get("/1.0").json()["metadata"]["api_extensions"]


def test_remove_a_member_then_it_joins_again(cluster: Cluster) -> None:
    refused = cluster.lxc(1, "cluster", "remove", "node2", check=False)
    assert refused.returncode != 0 and "is online" in refused.stderr
    missing = cluster.lxc(1, "cluster", "remove", "node9", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    cluster.lxc(2, "cluster", "remove", "--force", "--yes", "node4")
    three = {f"node{k}": "ONLINE" for k in (1, 2, 3)}
    assert cluster.states(1) == three
    # node4 still runs: its gateway sees the tombstone and stops heartbeating...
    log = cluster.node_dir(4) / "logs" / "all.log"
    deadline = time.monotonic() + 20
    while "removed from the cluster" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "removed from the cluster" in log.read_text()
    time.sleep(2)  # two heartbeats: it did not put itself back
    assert cluster.states(4) == three
    # ...until it joins again with a token.
    token = cluster.lxc(3, "cluster", "add", "node4").stdout.strip().splitlines()[-1]
    cluster.make("cluster-join", f"TOKEN={token}")
    wait_states(cluster, 1, {**three, "node4": "ONLINE"}, timeout=20)


def test_the_cluster_bus_is_closed(cluster: Cluster) -> None:
    """One set of users for every node, root-only; no anonymous client on any server."""
    root = cluster.base / "cluster"
    for path in (root / "credentials", root / "nats"):
        assert path.stat().st_mode & 0o077 == 0, path
    for path in (root / "credentials" / "admin.json", root / "nats" / "route-auth.conf",
                 root / "nats" / "auth.conf"):
        assert path.stat().st_mode & 0o077 == 0, path
    anonymous = """
import asyncio, nats
async def main():
    try:
        nc = await nats.connect("nats://127.0.0.1:4222", allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3)
    except Exception as exc:
        print("refused", exc)
        return
    await nc.close()
    print("admitted")
asyncio.run(main())
"""
    for k in (1, 2):
        r = cluster.in_node(k, anonymous)
        assert r.stdout.startswith("refused") and "uthorization" in r.stdout, (r.stdout, r.stderr)


def test_a_removed_member_leaves_the_flood_lists(cluster: Cluster) -> None:
    """``lxc cluster remove node3 --force``: node1's and node2's bridges stop flooding to
    node3's address without a network restart. Last in this module, after the
    fault tests (they bring node2 and node3 back without their fault points; node3 is gone
    after)."""
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
