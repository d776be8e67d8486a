"""VM live migration between cluster members (issue 13): ``lxc move v1 --target node2``
while it runs, through libvirt, disks copied while it runs (no shared storage).

Two namespaced nodes from ``make cluster-up`` (as tests/test_cluster.py, with a unique
prefix and its own CORRAL_DIR), each with its own libvirtd (deploy/cluster-lib.sh), the
cluster's defaults (btrfs pool and bridge per member) and the busybox VM image. One small
VM (128 MiB, TCG) is moved with the stock client and back through the REST API; the same
guest kernel keeps running (its boot_id and a process survive), ``lxc list`` shows the new
location, the downtime libvirt measured is in the operation's metadata. Failures leave the
VM running on the source and nothing on the target: a target whose libvirtd is down, and
a target whose QEMU cannot start the guest (its bridge is gone), and a source whose
gateway dies once the guest was sent (the guest keeps running on the target).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_cluster import Cluster

KERNEL_CACHE = Path("/var/cache/corral-test/vm-kernel")
BRIDGE = "vlbr0"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(shutil.which("libvirtd") is None or
                       shutil.which("qemu-system-x86_64") is None,
                       reason="needs libvirtd and qemu-system-x86_64 (deploy/libvirt.sh up)"),
    pytest.mark.skipif(shutil.which("lxc") is None, reason="needs Debian's lxd-client"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    from shared.image.build_vm import build_busybox_vm

    base = Path(tempfile.mkdtemp(prefix="corral-vlm-"))
    c = Cluster(base, "vl" + secrets.token_hex(3))
    c.env.pop("CORRAL_BOOTSTRAP", None)  # the default pool and bridge, per member
    c.env.update(CORRAL_CLUSTER_POOL_SIZE="1GiB", CORRAL_DEFAULT_NETWORK=BRIDGE,
                 CORRAL_VMS="1")
    try:
        c.make("cluster-up", "N=2")
        meta, rootfs = build_busybox_vm(tmp_path_factory.mktemp("vmimg"),
                                        cache_dir=KERNEL_CACHE, size_mib=64)
        c.lxc(1, "image", "import", str(meta), str(rootfs), "--alias", "vlvm")
        yield c
    finally:
        for k in (1, 2):
            if c.node_dir(k).exists():
                out = c.lxc(k, "list", "-c", "nL", "-f", "csv", check=False).stdout
                for row in out.splitlines():
                    if row.endswith(f",node{k}"):
                        c.lxc(k, "delete", "--force", row.split(",")[0], check=False)
        down = c.make("cluster-down", check=False)
        left = c.namespaces()
        daemons = _daemons(base)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not left, f"namespaces left behind: {left}"
        assert not daemons, f"cluster-down left libvirt daemons or QEMU running: {daemons}"


def _daemons(base: Path) -> list[str]:
    """libvirtd, virtlogd or QEMU processes of this cluster still alive (not zombies)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(base) in cmd and any(
                d in cmd for d in ("libvirtd", "virtlogd", "qemu-system")):
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def in_guest(c: Cluster, name: str, *cmd: str, k: int = 1) -> str:
    return c.lxc(k, "exec", name, "--", *cmd).stdout.strip()


def wait_agent(c: Cluster, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = c.lxc(1, "exec", name, "--", "true", check=False)
        if r.returncode == 0:
            return
        assert time.monotonic() < deadline, f"agent of {name} not up: {r.stderr}"
        time.sleep(1)


def location(c: Cluster, name: str, k: int = 1) -> tuple[str, str]:
    """(STATE, LOCATION) as ``lxc list`` shows them."""
    row = c.lxc(k, "list", name, "-c", "nsL", "-f", "csv").stdout.strip()
    _, state, where = row.split(",")
    return state, where


def libvirt_domains(c: Cluster, k: int) -> str:
    uri = f"qemu+unix:///system?socket={c.node_dir(k)}/libvirt/run/libvirt-sock"
    return subprocess.run(["virsh", "-q", "-c", uri, "list", "--all", "--name"],
                          capture_output=True, text=True, timeout=30).stdout


def seen_by(c: Cluster, k: int, path: Path) -> Path:
    """``path`` as node k's processes see it (its own mount namespace)."""
    pid = int((c.node_dir(k) / "run" / "all.pid").read_text())
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


def volumes_on(c: Cluster, k: int, pool: str = "default") -> list[str]:
    d = seen_by(c, k, c.node_dir(k) / "storage-pools" / pool / "virtual-machines")
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture(scope="module")
def vm(cluster: Cluster) -> str:
    name = "vl-v1"
    cluster.lxc(1, "launch", "vlvm", name, "--vm", "--target", "node1",
                "-c", "limits.memory=128MiB", "-c", "limits.cpu=1",
                "-c", "migration.stateful=true")
    wait_agent(cluster, name)
    return name


def test_every_node_has_its_own_libvirtd(cluster: Cluster) -> None:
    hosts = set()
    for k in (1, 2):
        uri = f"qemu+unix:///system?socket={cluster.node_dir(k)}/libvirt/run/libvirt-sock"
        r = subprocess.run(["virsh", "-c", uri, "hostname"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        hosts.add(r.stdout.strip())
    assert hosts == {f"{cluster.prefix}-node1", f"{cluster.prefix}-node2"}


def test_live_move_with_the_stock_client_keeps_the_guest_running(cluster: Cluster,
                                                                  vm: str) -> None:
    boot_id = in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id")
    in_guest(cluster, vm, "sh", "-c", "echo alive > /dev/shm/marker && "
             "echo on-disk > /root/marker && sync")
    uptime = float(in_guest(cluster, vm, "cat", "/proc/uptime").split()[0])
    assert location(cluster, vm) == ("RUNNING", "node1")

    r = cluster.lxc(1, "move", vm, "--target", "node2", check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)

    for k in (1, 2):  # every member's API says so
        assert location(cluster, vm, k) == ("RUNNING", "node2")
    # the same kernel, not a reboot: boot_id and what lives in its memory (tmpfs) stayed
    assert in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
    # what the guest wrote to its disk came along (the disk was mirrored while it ran)
    assert in_guest(cluster, vm, "cat", "/root/marker") == "on-disk"
    assert float(in_guest(cluster, vm, "cat", "/proc/uptime").split()[0]) > uptime
    # the source has nothing left; the target's volume has the instance's name
    assert vm not in libvirt_domains(cluster, 1)
    assert vm in libvirt_domains(cluster, 2)
    assert vm not in volumes_on(cluster, 1)
    assert volumes_on(cluster, 2) == [vm]
    assert not (cluster.node_dir(1) / "virtual-machines" / vm).exists()


def test_live_move_back_reports_the_downtime(cluster: Cluster, vm: str) -> None:
    if location(cluster, vm)[1] != "node2":
        pytest.skip("the move there failed")
    r = cluster.lxc(2, "query", "--wait", "-X", "POST", f"/1.0/instances/{vm}?target=node1",
                    "--data", json.dumps({"migration": True, "live": True}))
    meta = json.loads(r.stdout)["metadata"]["live_migration"]
    assert meta["source"] == "node2" and meta["target"] == "node1"
    assert isinstance(meta["downtime_ms"], int) and 0 <= meta["downtime_ms"] < 10_000
    assert meta["total_time_ms"] > 0 and meta["data_total"] > 64 * 2**20  # 128 MiB guest
    assert location(cluster, vm) == ("RUNNING", "node1")
    assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
    assert volumes_on(cluster, 1) == [vm] and volumes_on(cluster, 2) == []


def test_live_move_on_a_dir_pool(cluster: Cluster) -> None:
    """A dir pool's VM volume is an overlay on the pool's image volume (absolute backing
    path, another one on the target): only the overlay's data moves, the guest's disk
    reads the same."""
    cluster.lxc(1, "storage", "create", "vldir", "dir")
    name = "vl-d1"
    try:
        cluster.lxc(1, "launch", "vlvm", name, "--vm", "--target", "node1", "-s", "vldir",
                    "-c", "limits.memory=128MiB", "-c", "limits.cpu=1",
                    "-c", "migration.stateful=true")
        wait_agent(cluster, name)
        boot_id = in_guest(cluster, name, "cat", "/proc/sys/kernel/random/boot_id")
        in_guest(cluster, name, "sh", "-c", "echo dir-disk > /root/marker && sync")
        r = cluster.lxc(1, "move", name, "--target", "node2", check=False)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert location(cluster, name) == ("RUNNING", "node2")
        assert in_guest(cluster, name, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
        assert in_guest(cluster, name, "cat", "/root/marker") == "dir-disk"
        assert in_guest(cluster, name, "ls", "/bin/busybox") == "/bin/busybox"  # the image
        assert volumes_on(cluster, 1, "vldir") == [] and \
            volumes_on(cluster, 2, "vldir") == [name]
    finally:
        cluster.lxc(1, "delete", "--force", name, check=False)
        cluster.lxc(1, "storage", "delete", "vldir", check=False)


def test_live_move_needs_migration_stateful(cluster: Cluster, vm: str) -> None:
    cluster.lxc(1, "config", "set", vm, "migration.stateful=false")
    try:
        r = cluster.lxc(1, "move", vm, "--target", "node2", check=False)
        assert r.returncode != 0
        assert "migration.stateful=true" in r.stderr and "--stateless" in r.stderr
        assert location(cluster, vm) == ("RUNNING", "node1")
    finally:
        cluster.lxc(1, "config", "set", vm, "migration.stateful=true")


PREPARE = """
import asyncio, json, sys
import nats
async def main():
    c = json.load(open(sys.argv[1]))
    nc = await nats.connect("nats://127.0.0.1:4222", user=c["user"], password=c["password"],
                            inbox_prefix=c["inbox_prefix"])
    msg = await nc.request("corral.node.node2.instance.vm_migrate_prepare",
                           json.dumps({"project": "default", "instance": sys.argv[2]}).encode(),
                           timeout=60)
    print(msg.data.decode())
    await nc.close()
asyncio.run(main())
"""


def test_a_migration_cut_short_leaves_nothing_after_the_target_restarts(
        cluster: Cluster, vm: str) -> None:
    """The gateway dies right after the target prepared (nothing else will come): the
    target's next start removes the temporary volume and the spec directory."""
    r = cluster.in_node(2, PREPARE, vm)
    assert r.returncode == 0 and "\"type\":\"sync\"" in r.stdout, (r.stdout, r.stderr)
    assert volumes_on(cluster, 2) == [f"{vm}-livemig"]
    assert (cluster.node_dir(2) / "virtual-machines" / vm).exists()
    pid = int((cluster.node_dir(2) / "run" / "all.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # node2's services, as a crash would
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cluster.make("cluster-up")
    deadline = time.monotonic() + 60
    while volumes_on(cluster, 2) != []:
        assert time.monotonic() < deadline, volumes_on(cluster, 2)
        time.sleep(0.5)
    assert not (cluster.node_dir(2) / "virtual-machines" / vm).exists()
    assert location(cluster, vm) == ("RUNNING", "node1")
    r = cluster.lxc(1, "storage", "volume", "list", "default", "-f", "csv", check=False)
    assert "livemig" not in r.stdout, r.stdout


def test_target_libvirtd_down_leaves_the_vm_running_on_the_source(cluster: Cluster,
                                                                   vm: str) -> None:
    pidfile = cluster.node_dir(2) / "libvirt" / "libvirtd.pid"
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while (cluster.node_dir(2) / "libvirt" / "run" / "libvirt-sock").exists() \
            or pidfile.exists():
        assert time.monotonic() < deadline, "node2's libvirtd did not stop"
        time.sleep(0.1)
    try:
        r = cluster.lxc(1, "move", vm, "--target", "node2", check=False)
        assert r.returncode != 0, r.stdout
        assert location(cluster, vm) == ("RUNNING", "node1")
        assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
        assert volumes_on(cluster, 2) == []
        assert not (cluster.node_dir(2) / "virtual-machines" / vm).exists()
    finally:
        cluster.make("cluster-up")  # idempotent: starts node2's libvirtd again
    assert libvirt_domains(cluster, 2).strip() == ""


def test_gateway_killed_after_a_live_send_keeps_the_guest(cluster: Cluster, vm: str) -> None:
    """The guest runs on node2 when node1's gateway dies (``vm_live_move:after_send``;
    a node runs every service in one process, so its instance service dies with it, as a
    member's crash): started again, node1 finishes the move (the record says node2,
    node1's copy goes) and the guest kept running (its boot_id and memory). Then an
    evacuation of node2 in live-migrate mode moves it live (back to node1), and restore
    returns it live. node2's services are killed too before the restart: their start
    keeps the guest the journal says was sent there. node1's process is started again
    with the fault armed first (the guest keeps running meanwhile); at the end the guest
    goes back to node1 for the test after this one."""
    def kill(k: int) -> None:
        pid = int((cluster.node_dir(k) / "run" / "all.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)

    def wait_gone(pid: int) -> None:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text(
                ).rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, f"pid {pid} was not killed"
            time.sleep(0.2)

    assert location(cluster, vm) == ("RUNNING", "node1")
    kill(1)
    cluster.env["CORRAL_FAULT"] = "vm_live_move:after_send"
    try:
        cluster.make("cluster-up")  # node1's process only, now with the fault armed
    finally:
        cluster.env.pop("CORRAL_FAULT")
    wait_agent(cluster, vm)
    boot_id = in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id")
    in_guest(cluster, vm, "sh", "-c", "echo alive > /dev/shm/marker && echo disk > /root/m "
             "&& sync")
    pid = int((cluster.node_dir(1) / "run" / "all.pid").read_text())
    r = cluster.lxc(1, "move", vm, "--target", "node2", check=False)
    assert r.returncode != 0, r.stdout
    wait_gone(pid)  # node1's process died at the point
    kill(2)  # the journal says the guest was sent there; its record still says node1
    cluster.make("cluster-up")
    deadline = time.monotonic() + 120
    while location(cluster, vm, 2) != ("RUNNING", "node2"):
        assert time.monotonic() < deadline, location(cluster, vm, 2)
        time.sleep(1)
    assert location(cluster, vm, 1) == ("RUNNING", "node2")
    assert in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
    assert in_guest(cluster, vm, "cat", "/root/m") == "disk"
    deadline = time.monotonic() + 60
    while vm in libvirt_domains(cluster, 1) or volumes_on(cluster, 1):
        assert time.monotonic() < deadline, (libvirt_domains(cluster, 1),
                                             volumes_on(cluster, 1))
        time.sleep(1)
    assert volumes_on(cluster, 2) == [vm]

    cluster.lxc(1, "query", "--wait", "-X", "POST", "/1.0/cluster/members/node2/state",
                "--data", json.dumps({"action": "evacuate", "mode": "live-migrate"}))
    assert location(cluster, vm) == ("RUNNING", "node1")
    assert in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    cluster.lxc(1, "cluster", "restore", "node2", "--force")
    assert location(cluster, vm) == ("RUNNING", "node2")
    assert in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
    cluster.lxc(2, "move", vm, "--target", "node1")  # where the next test wants it
    assert location(cluster, vm) == ("RUNNING", "node1")
    assert in_guest(cluster, vm, "cat", "/proc/sys/kernel/random/boot_id") == boot_id


def test_target_that_cannot_start_the_guest_leaves_nothing(cluster: Cluster,
                                                           vm: str) -> None:
    """Last: node2's bridge is removed (its QEMU cannot plug the NIC), so the migration
    fails after the target's volume was made: the target drops it all again."""
    subprocess.run(["ip", "-n", f"{cluster.prefix}-node2", "link", "del", BRIDGE],
                   check=True)
    r = cluster.lxc(1, "move", vm, "--target", "node2", check=False)
    assert r.returncode != 0, r.stdout
    assert "keeps running" in r.stderr, r.stderr
    assert location(cluster, vm) == ("RUNNING", "node1")
    assert in_guest(cluster, vm, "cat", "/dev/shm/marker") == "alive"
    assert volumes_on(cluster, 2) == []
    assert libvirt_domains(cluster, 2).strip() == ""
    assert not (cluster.node_dir(2) / "virtual-machines" / vm).exists()
