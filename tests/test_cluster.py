"""A 3-node cluster on this machine (``make cluster-up``), seen through the stock client.

The module brings the nodes up once, through the Makefile targets users run, in network
namespaces named with a unique prefix, and removes everything at the end (also when a
step fails): processes, namespaces (with their veths and the hub), the directory.
The offline threshold is short here (CORRAL_CLUSTER_OFFLINE_THRESHOLD) so a killed node
turns OFFLINE in seconds; it stays above the ~10 s a JetStream stream needs to elect a new
leader when its leader's node dies, so live nodes never blink OFFLINE meanwhile.
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

from tests.world import lxc_conf

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)  # the venv running the tests (a worktree has none)
THRESHOLD = 14

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
                    "LXD_CONF": lxc_conf(base / "lxc-conf")}
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


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="corral-cluster-"))
    c = Cluster(base, "ct" + secrets.token_hex(3))
    try:
        c.make("cluster-up", "N=3")
        yield c
    finally:
        down = c.make("cluster-down", check=False)
        left = c.namespaces()
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
