"""Instance snapshots (issue 10) through the stock ``lxc`` client, REST and ``corral``.

On a private stack (its own nats-server and services, the schedule/expiry task every
second): these tests restart the instance service (expiry while it was down, crashes
mid-snapshot and mid-restore), which the session's shared stack must never see. Both
pool drivers where the volume work differs (btrfs: read-only subvolume snapshots and a
swapped-in writable one; dir: copies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .stack import BIN, Stack, private_stack, socket_client, wait_for
from .test_faults import kv_records, restart, start_again, wait_dead, wait_final
from .world import World, lxc, make_world, wait_op

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists() or shutil.which("lxc") is None:
    pytest.skip("needs root, busybox-static and Debian's lxd-client", allow_module_level=True)

SNAPSHOT_KEYS = {"architecture", "config", "created_at", "devices", "ephemeral",
                 "expanded_config", "expanded_devices", "expires_at", "last_used_at", "name",
                 "profiles", "stateful", "size"}


@pytest.fixture(scope="module")
def sstack(request):
    with private_stack(request, "snapshots", CORRAL_SNAPSHOT_INTERVAL="1") as s:
        yield s


@pytest.fixture(scope="module")
def sapi(sstack):
    with socket_client(sstack) as client:
        yield client


@pytest.fixture(scope="module", params=["btrfs", "dir"])
def world(request, sstack, sapi, busybox_tarball):
    with make_world(sapi, sstack, busybox_tarball, network=False,
                    pool_driver=request.param) as w:
        w.pool_driver = request.param  # type: ignore[attr-defined]
        yield w


# -- helpers -----------------------------------------------------------------------------


def wait_passes(log: Path, since: int, passes: int) -> None:
    """Wait until the instance service's schedule/expiry task ended ``passes`` passes
    after offset ``since`` of its log (what it would do, it has done by then)."""
    def ended() -> int:
        with log.open(errors="replace") as f:
            f.seek(since)
            return f.read().count('"event": "snapshot pass done"')
    wait_for(lambda: ended() >= passes, 30, what=f"{passes} snapshot passes")



def snaps(w: World, name: str) -> list[str]:
    r = w.api.get(f"/1.0/instances/{name}/snapshots", params={"recursion": 1})
    assert r.status_code == 200, r.text
    return [s["name"] for s in r.json()["metadata"]]


def snap_dir(w: World, name: str, snap: str = "") -> Path:
    d = w.stack.dir / "storage-pools" / w.pool / "containers-snapshots" / name
    return d / snap if snap else d


def rootfs(w: World, name: str) -> Path:
    return w.volume(name) / "rootfs"


def take(w: World, name: str, snap: str = "", **body) -> dict:
    return w.wait(w.api.post(f"/1.0/instances/{name}/snapshots",
                             json={"name": snap, **body}))


def corral(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def snapshot_records(w: World, name: str) -> list[dict]:
    return [r for r in kv_records(w.stack, "instance_snapshots") if r["instance"] == name]


# -- snapshot, restore -------------------------------------------------------------------


def test_snapshot_write_restore_stopped(world, sstack):
    """lxc snapshot; a file written after it and a config key set after it are gone after
    lxc restore; the volume snapshot is on disk (read-only on btrfs)."""
    name = world.create("st")
    lxc(sstack, "snapshot", name, "snap0")
    assert snaps(world, name) == ["snap0"]
    assert (snap_dir(world, name, "snap0") / "rootfs" / "bin").exists()
    (rootfs(world, name) / "root").mkdir(exist_ok=True)
    (rootfs(world, name) / "root" / "after").write_text("x")
    lxc(sstack, "config", "set", name, "user.after", "yes")
    lxc(sstack, "restore", name, "snap0")
    assert not (rootfs(world, name) / "root" / "after").exists()
    assert "user.after" not in world.get(name)["config"]
    assert (rootfs(world, name) / "bin").exists()
    if world.pool_driver == "btrfs":
        r = subprocess.run(["btrfs", "property", "get", "-ts",
                            str(snap_dir(world, name, "snap0")), "ro"],
                           capture_output=True, text=True)
        assert "ro=true" in r.stdout, r
    lxc(sstack, "start", name)
    assert world.live(name)["status"] == "Running"


def test_restore_of_a_running_instance(world, sstack):
    """A running instance is stopped, restored and started again (as LXD)."""
    name = world.create("run", start=True)
    lxc(sstack, "exec", name, "--", "sh", "-c", "echo one > /root/mark")
    lxc(sstack, "snapshot", name)  # default name snap0
    lxc(sstack, "exec", name, "--", "sh", "-c", "echo two > /root/mark; touch /root/new")
    lxc(sstack, "restore", name, "snap0")
    assert world.live(name)["status"] == "Running"
    out = lxc(sstack, "exec", name, "--", "cat", "/root/mark").stdout
    assert out.strip() == "one"
    r = lxc(sstack, "exec", name, "--", "test", "-e", "/root/new", check=False)
    assert r.returncode != 0


def test_default_names_pattern_and_expiry_config(world, sstack, sapi):
    name = world.create("names")
    take(world, name)
    take(world, name)
    assert snaps(world, name) == ["snap0", "snap1"]
    lxc(sstack, "config", "set", name, "snapshots.pattern",
        "auto-{{ creation_date|date:'2006-01-02' }}-%d")
    lxc(sstack, "config", "set", name, "snapshots.expiry", "2d 3H")
    take(world, name)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert snaps(world, name)[-1] == f"auto-{today}-0"
    snap = sapi.get(f"/1.0/instances/{name}/snapshots/auto-{today}-0").json()["metadata"]
    exp = datetime.fromisoformat(snap["expires_at"][:26].rstrip("Z") + "+00:00")
    want = datetime.now(timezone.utc) + timedelta(days=2, hours=3)
    assert abs((exp - want).total_seconds()) < 60
    lxc(sstack, "snapshot", name, "keep", "--no-expiry")
    keep = sapi.get(f"/1.0/instances/{name}/snapshots/keep").json()["metadata"]
    assert keep["expires_at"].startswith("0001-01-01")
    for bad in ("snapshots.expiry=1x", "snapshots.schedule=every day",
                "snapshots.pattern=a%db%d", "snapshots.schedule.stopped=maybe"):
        k, v = bad.split("=")
        r = sapi.patch(f"/1.0/instances/{name}", json={"config": {k: v}})
        assert r.status_code == 400, (bad, r.text)


def test_list_info_show_and_snapshots_column(world, sstack, sapi):
    name = world.create("list")
    lxc(sstack, "snapshot", name, "a")
    lxc(sstack, "snapshot", name, "b")
    urls = sapi.get(f"/1.0/instances/{name}/snapshots").json()["metadata"]
    assert urls == [f"/1.0/instances/{name}/snapshots/a", f"/1.0/instances/{name}/snapshots/b"]
    objs = sapi.get(f"/1.0/instances/{name}/snapshots", params={"recursion": 1}).json()
    assert [o["name"] for o in objs["metadata"]] == ["a", "b"]
    assert SNAPSHOT_KEYS <= set(objs["metadata"][0])
    one = sapi.get(f"/1.0/containers/{name}/snapshots/a")
    assert one.status_code == 200 and one.headers.get("ETag")
    assert one.json()["metadata"]["name"] == "a"
    out = lxc(sstack, "list", name, "--format", "csv", "-c", "nS").stdout
    assert out.strip() == f"{name},2"
    info = lxc(sstack, "info", name).stdout
    assert "Snapshots:" in info and "| a " in info and "| b " in info
    full = sapi.get(f"/1.0/instances/{name}", params={"recursion": 1}).json()["metadata"]
    assert [s["name"] for s in full["snapshots"]] == ["a", "b"]
    shown = lxc(sstack, "config", "show", f"{name}/a").stdout
    assert "expires_at" in shown
    rows = corral(sstack, "snapshot", "list", name, "-f", "csv").stdout
    assert rows.splitlines()[0].startswith("a,") and rows.splitlines()[1].startswith("b,")
    assert "name: a" in corral(sstack, "snapshot", "show", name, "a").stdout


def test_rename_update_delete(world, sstack, sapi):
    name = world.create("ren")
    lxc(sstack, "snapshot", name, "s0")
    lxc(sstack, "rename", f"{name}/s0", f"{name}/s1")
    assert snaps(world, name) == ["s1"]
    assert snap_dir(world, name, "s1").is_dir() and not snap_dir(world, name, "s0").exists()
    r = sapi.patch(f"/1.0/instances/{name}/snapshots/s1",
                   json={"expires_at": "2099-01-02T03:04:05Z"})
    wait_op(sapi, r)
    got = sapi.get(f"/1.0/instances/{name}/snapshots/s1").json()["metadata"]
    assert got["expires_at"].startswith("2099-01-02T03:04:05")
    # lxc config edit c1/s1 with the new YAML on stdin (no terminal): a PUT
    r = subprocess.run(["lxc", "config", "edit", f"{name}/s1"], capture_output=True,
                       text=True, timeout=60, input="expires_at: 2098-05-06T07:08:09Z\n",
                       env={**sstack.env, "LXD_DIR": str(sstack.dir)})
    assert r.returncode == 0, r
    got = sapi.get(f"/1.0/instances/{name}/snapshots/s1").json()["metadata"]
    assert got["expires_at"].startswith("2098-05-06T07:08:09")
    r = sapi.put(f"/1.0/instances/{name}/snapshots/s1", headers={"If-Match": "nope"},
                 json={"expires_at": "2097-01-01T00:00:00Z"})
    assert r.status_code == 412, r.text
    corral(sstack, "snapshot", "rename", name, "s1", "s2")
    corral(sstack, "snapshot", name, "s3")
    assert snaps(world, name) == ["s2", "s3"]
    lxc(sstack, "delete", f"{name}/s2")
    corral(sstack, "snapshot", "delete", name, "s3")
    assert snaps(world, name) == []
    assert not snap_dir(world, name).exists()
    assert snapshot_records(world, name) == []
    corral(sstack, "snapshot", name, "c0")
    (rootfs(world, name) / "root").mkdir(exist_ok=True)
    (rootfs(world, name) / "root" / "later").write_text("x")
    corral(sstack, "restore", name, "c0")
    assert not (rootfs(world, name) / "root" / "later").exists()
    lxc(sstack, "snapshot", name, "c0", "--reuse")
    assert snaps(world, name) == ["c0"]


def test_errors(world, sstack, sapi):
    name = world.create("err")
    r = sapi.post("/1.0/instances/nope-x/snapshots", json={"name": "s"})
    assert r.status_code == 404
    assert sapi.get("/1.0/instances/nope-x/snapshots").status_code == 404
    assert sapi.get(f"/1.0/instances/{name}/snapshots/nope").status_code == 404
    assert sapi.delete(f"/1.0/instances/{name}/snapshots/nope").status_code == 404
    r = sapi.put(f"/1.0/instances/{name}", json={"restore": "nope"})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    take(world, name, "s0")
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "s0"})
    assert r.status_code == 409, r.text
    r = lxc(sstack, "snapshot", name, "s0", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    for bad in ("a b", "a/b", "..", "-x", 5):
        r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": bad})
        assert r.status_code == 400, (bad, r.text)
    r = sapi.post(f"/1.0/instances/{name}/snapshots/s0", json={"name": "s0 x"})
    assert r.status_code == 400
    take(world, name, "s1")
    r = sapi.post(f"/1.0/instances/{name}/snapshots/s0", json={"name": "s1"})
    assert r.status_code == 409
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "s2",
                                                            "expires_at": "tomorrow"})
    assert r.status_code == 400
    # stateful: a stopped instance, then a running container (CRIU does not work here)
    r = lxc(sstack, "snapshot", name, "st", "--stateful", check=False)
    assert r.returncode != 0 and "stateful" in r.stderr.lower()
    lxc(sstack, "start", name)
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "st", "stateful": True})
    assert r.status_code == 400 and ("CRIU" in r.json()["error"]
                                     or "criu" in r.json()["error"]), r.text
    assert snaps(world, name) == ["s0", "s1"]
    assert sorted(p.name for p in snap_dir(world, name).iterdir()) == ["s0", "s1"]


def test_delete_and_rename_instance_carry_snapshots(world, sstack, sapi):
    a = world.create("mv")
    take(world, a, "s0")
    (rootfs(world, a) / "root").mkdir(exist_ok=True)
    (rootfs(world, a) / "root" / "later").write_text("x")
    b = world.name("mvd")
    lxc(sstack, "move", a, b)
    assert snaps(world, b) == ["s0"] and snap_dir(world, b, "s0").is_dir()
    assert sapi.get(f"/1.0/instances/{a}/snapshots").status_code == 404
    assert [r["instance"] for r in snapshot_records(world, a)] == []
    lxc(sstack, "restore", b, "s0")
    assert not (rootfs(world, b) / "root" / "later").exists()
    take(world, b, "s1")
    started = time.monotonic()
    lxc(sstack, "delete", b)
    took = time.monotonic() - started
    assert sapi.get(f"/1.0/instances/{b}").status_code == 404
    assert snapshot_records(world, b) == [] and not snap_dir(world, b).exists()
    assert took < 10, took


# -- expiry and schedules --------------------------------------------------------------


def _soon(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def test_expired_snapshots_go(world, sapi):
    name = world.create("exp")
    take(world, name, "short", expires_at=_soon(2))
    take(world, name, "long", expires_at=_soon(3600))
    wait_for(lambda: snaps(world, name) == ["long"], 20, what="the expired snapshot to go")
    assert not snap_dir(world, name, "short").exists()


def test_expired_while_the_service_was_down(world, sstack, sapi):
    name = world.create("expdown")
    expires = time.monotonic() + 4
    take(world, name, "short", expires_at=_soon(4))
    sstack.stop("instance")
    try:
        time.sleep(max(0.0, expires + 1 - time.monotonic()))  # expired while down
    finally:
        start_again(sstack, "instance")
    wait_for(lambda: snaps(world, name) == [], 15, what="the snapshot expired while down")
    assert not snap_dir(world, name, "short").exists()
    assert snapshot_records(world, name) == []


def test_schedule_at_startup_and_cron(world, sstack, sapi):
    """@startup: a snapshot when the instance starts; a cron schedule fires on a stopped
    instance only with snapshots.schedule.stopped. The instance service is started again
    with its schedule clock shifted (CORRAL_SNAPSHOT_SCHEDULE_SHIFT) so the next cron
    minute comes a few seconds later instead of up to a minute: the real pass fires it."""
    if world.pool_driver != "btrfs":
        pytest.skip("the schedule does not depend on the pool: once is enough")
    name = world.create("sched")
    lxc(sstack, "config", "set", name, "snapshots.schedule", "@startup")
    lxc(sstack, "start", name)
    wait_for(lambda: len(snaps(world, name)) == 1, 15, what="the @startup snapshot")
    lxc(sstack, "stop", name, "--force")
    other = world.create("cron")  # stopped, snapshotted every minute
    try:
        lxc(sstack, "config", "set", other, "snapshots.schedule", "* * * * *")
        lxc(sstack, "config", "set", other, "snapshots.schedule.stopped", "true")
        lxc(sstack, "config", "set", other, "snapshots.expiry", "1H")
        assert snaps(world, other) == []
        shift = -(time.time() + 8) % 60  # the shifted clock's minute ends 8 s from now
        restart(sstack, "instance", CORRAL_SNAPSHOT_SCHEDULE_SHIFT=f"{shift:.3f}")
        wait_for(lambda: len(snaps(world, other)) >= 1, 75, interval=0.5,
                 what="the cron schedule to fire")
        first = sapi.get(f"/1.0/instances/{other}/snapshots/snap0").json()["metadata"]
        assert not first["expires_at"].startswith("0001")
        assert len(snaps(world, name)) == 1  # stopped, no .stopped: nothing more
    finally:
        world.remove(other)  # no scheduled snapshot may hit a fault point a later test arms


# -- crashes -------------------------------------------------------------------------------


def test_crash_mid_snapshot_leaves_nothing(world, sstack, sapi):
    name = world.create("crsnap")
    restart(sstack, "instance", fault="snapshot:after_volume")
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "half"})
    op = r.json().get("operation")
    wait_dead(sstack, "instance")
    start_again(sstack, "instance")
    if op:
        assert wait_final(sapi, op)["status"] == "Failure"
    wait_for(lambda: snapshot_records(world, name) == [] and
             not snap_dir(world, name, "half").exists(), 30,
             what="the half-made snapshot to be removed")
    assert snaps(world, name) == []
    take(world, name, "half")  # the name is free again
    assert snaps(world, name) == ["half"]


def test_crash_mid_restore_is_finished_at_start(world, sstack, sapi):
    name = world.create("crrest")
    take(world, name, "s0")
    (rootfs(world, name) / "root").mkdir(exist_ok=True)
    (rootfs(world, name) / "root" / "later").write_text("x")
    lxc(sstack, "config", "set", name, "user.later", "yes")
    restart(sstack, "instance", fault="restore:after_volume")
    r = sapi.put(f"/1.0/instances/{name}", json={"restore": "s0"})
    op = r.json().get("operation")
    wait_dead(sstack, "instance")
    # The volume is restored, the record not yet: the journal says so.
    assert not (rootfs(world, name) / "root" / "later").exists()
    rec = [x for x in kv_records(sstack, "instances") if x["name"] == name][0]
    assert rec.get("restoring", {}).get("snapshot") == "s0"
    start_again(sstack, "instance")
    if op:
        assert wait_final(sapi, op)["status"] == "Failure"
    wait_for(lambda: "user.later" not in world.get(name)["config"], 30,
             what="the interrupted restore to be finished")
    rec = [x for x in kv_records(sstack, "instances") if x["name"] == name][0]
    assert "restoring" not in rec
    assert (rootfs(world, name) / "bin").exists()
    lxc(sstack, "start", name)


# -- lifecycle events ----------------------------------------------------------------------


def test_lifecycle_events(world, sstack):
    """instance-snapshot-created/-updated/-renamed/-deleted and instance-restored, as
    ``lxc monitor`` shows them."""
    if world.pool_driver != "btrfs":
        pytest.skip("events do not depend on the pool")
    name = world.create("ev")
    mon = subprocess.Popen(["lxc", "monitor", "--type", "lifecycle"],
                           env={**sstack.env, "LXD_DIR": str(sstack.dir)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)  # the monitor's websocket is up
        lxc(sstack, "snapshot", name, "e0")
        world.wait(world.api.put(f"/1.0/instances/{name}/snapshots/e0",
                                 json={"expires_at": "2099-01-01T00:00:00Z"}))
        lxc(sstack, "rename", f"{name}/e0", f"{name}/e1")
        lxc(sstack, "restore", name, "e1")
        lxc(sstack, "delete", f"{name}/e1")
        time.sleep(1)
    finally:
        mon.terminate()  # our own child, by its handle
        out, _ = mon.communicate(timeout=10)
    for action in ("instance-snapshot-created", "instance-snapshot-updated",
                   "instance-snapshot-renamed", "instance-restored",
                   "instance-snapshot-deleted"):
        assert f"action: {action}" in out, (action, out[-3000:])
    assert f"source: /1.0/instances/{name}/snapshots/e1" in out
    assert f"snapshot: {name}/e1" in out


# -- a virtual machine -----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vmworld(sstack, sapi, busybox_vm_image):
    """libvirtd for the private stack, a btrfs pool, a profile and the busybox VM image."""
    if not shutil.which("qemu-system-x86_64") or not shutil.which("libvirtd"):
        pytest.skip("needs qemu-system-x86 and libvirt")

    env = {**os.environ, "CORRAL_DIR": str(sstack.dir), "CORRAL_APT_UPDATED": "1"}
    subprocess.run([str(REPO / "deploy/libvirt.sh"), "up"], env=env, check=True,
                   capture_output=True)
    prefix = "v" + os.urandom(3).hex()
    w = World(sapi, sstack, prefix, pool=f"{prefix}p", profile=f"{prefix}pr",
              image=f"{prefix}-vm")
    fp = ""
    try:
        wait_for(lambda: "qemu" in sapi.get("/1.0").json()["metadata"]["environment"]
                 ["driver"], 30, what="the qemu driver")
        assert sapi.post("/1.0/storage-pools", json={
            "name": w.pool, "driver": "btrfs", "config": {"size": "1GiB"}}).status_code == 200
        assert sapi.post("/1.0/profiles", json={"name": w.profile, "devices": {
            "root": {"type": "disk", "path": "/", "pool": w.pool}}}).status_code == 200
        meta, root = busybox_vm_image
        r = sapi.post("/1.0/images", files={
            "metadata": (meta.name, meta.read_bytes(), "application/octet-stream"),
            "rootfs.img": (root.name, root.read_bytes(), "application/octet-stream")})
        fp = wait_op(sapi, r)["metadata"]["fingerprint"]
        assert sapi.post("/1.0/images/aliases", json={"name": w.image, "target": fp}
                         ).status_code in (200, 201)
        yield w
    finally:
        for name in list(w.instances):
            w.remove(name)
        sapi.delete(f"/1.0/images/aliases/{w.image}")
        if fp:
            r = sapi.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(sapi, r, ok=False)
        sapi.delete(f"/1.0/profiles/{w.profile}")
        sapi.delete(f"/1.0/storage-pools/{w.pool}")
        subprocess.run([str(REPO / "deploy/libvirt.sh"), "down"], env=env, check=False,
                       capture_output=True)


def test_vm_snapshot_and_restore(vmworld, sstack, sapi):
    """A stopped VM: snapshot, change its volume and config, restore, boot to the agent;
    a stateful snapshot of a running VM is refused with the reason."""
    w = vmworld
    name = w.name("vm")
    w.wait(sapi.post("/1.0/instances", json={
        "name": name, "type": "virtual-machine", "profiles": [w.profile],
        "source": {"type": "image", "alias": w.image},
        "config": {"limits.cpu": "1", "limits.memory": "256MiB"}}))
    vol = sstack.dir / "storage-pools" / w.pool / "virtual-machines" / name
    lxc(sstack, "snapshot", name, "v0")
    snap = sstack.dir / "storage-pools" / w.pool / "virtual-machines-snapshots" / name / "v0"
    assert snap.is_dir() and sorted(p.name for p in snap.iterdir()) == \
        sorted(p.name for p in vol.iterdir())
    (vol / "marker").write_text("after the snapshot")
    lxc(sstack, "config", "set", name, "user.after", "yes")
    lxc(sstack, "restore", name, "v0")
    assert not (vol / "marker").exists()
    assert "user.after" not in w.get(name)["config"]
    lxc(sstack, "start", name)

    def agent() -> bool:
        r = sapi.post(f"/1.0/instances/{name}/exec", json={"command": ["true"]})
        return r.status_code == 202 and wait_op(sapi, r, ok=False)["status"] == "Success"

    wait_for(agent, 120, interval=0.5, what="the restored VM's agent")

    # Stateful: libvirt saves the memory into the disk; the restore resumes the guest
    # where it was (its uptime goes on from then, no boot), the file made since is gone.
    def uptime() -> float:
        return float(corral(sstack, "exec", name, "--", "cat", "/proc/uptime").stdout.split()[0])

    # A fresh boot answers at about the uptime this one answered at: three times that and
    # 5 s more (at most 25, as a fixed bound did) tells a resumed guest from a rebooted one.
    floor = min(25.0, 3 * uptime() + 5)
    wait_for(lambda: uptime() > floor, 90, interval=1, what=f"the guest to be up {floor} s")
    lxc(sstack, "snapshot", name, "mem", "--stateful")
    listed = sapi.get(f"/1.0/instances/{name}/snapshots/mem").json()["metadata"]
    assert listed["stateful"] is True
    assert "| YES " in lxc(sstack, "info", name).stdout
    corral(sstack, "exec", name, "--", "touch", "/root/after")
    time.sleep(2)
    lxc(sstack, "restore", name, "mem", "--stateful")
    assert w.live(name)["status"] == "Running"
    wait_for(agent, 60, interval=0.5, what="the agent of the resumed VM")
    assert uptime() > floor  # a fresh boot would answer after a few seconds of uptime
    r = corral(sstack, "exec", name, "--", "test", "-e", "/root/after", check=False)
    assert r.returncode != 0
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "x", "stateful": True})
    assert r.status_code == 202, r.text  # a running VM: accepted
    w.wait(r)
    lxc(sstack, "restore", name, "v0")  # stateless, running: stopped, restored, booted
    assert w.live(name)["status"] == "Running"
    wait_for(agent, 120, interval=0.5, what="the agent of the rebooted VM")
    assert uptime() < floor
    lxc(sstack, "stop", name, "--force")
    r = sapi.post(f"/1.0/instances/{name}/snapshots", json={"name": "y", "stateful": True})
    assert r.status_code == 400 and "isn't running" in r.json()["error"], r.text
    lxc(sstack, "delete", name)
    assert not snap.exists()


# -- projects and pylxd --------------------------------------------------------------------


def test_snapshots_in_a_project(world, sstack, sapi):
    """A project's instance: its snapshots are its own (same names as default's beside
    it), listed with ?project=, on disk under <project>_<name>."""
    if world.pool_driver != "btrfs":
        pytest.skip("projects do not depend on the pool")
    proj = world.prefix + "pj"
    lxc(sstack, "project", "create", proj, "-c", "features.images=false",
        "-c", "features.profiles=false")
    name = world.create("proj")
    try:
        lxc(sstack, "init", world.image, name, "-p", world.profile, "--project", proj)
        take(world, name, "s0")  # the default project's instance of the same name
        lxc(sstack, "snapshot", name, "s0", "--project", proj)
        lxc(sstack, "snapshot", name, "s1", "--project", proj)
        got = sapi.get(f"/1.0/instances/{name}/snapshots", params={"project": proj}).json()
        assert got["metadata"] == [f"/1.0/instances/{name}/snapshots/s0?project={proj}",
                                   f"/1.0/instances/{name}/snapshots/s1?project={proj}"]
        assert snaps(world, name) == ["s0"]
        assert snap_dir(world, f"{proj}_{name}", "s1").is_dir()
        lxc(sstack, "restore", name, "s0", "--project", proj)
        lxc(sstack, "delete", f"{name}/s1", "--project", proj)
        out = lxc(sstack, "list", name, "--project", proj, "--format", "csv", "-c", "nS")
        assert out.stdout.strip() == f"{name},1"
        lxc(sstack, "delete", name, "--project", proj)
        assert not snap_dir(world, f"{proj}_{name}").exists()
        assert snaps(world, name) == ["s0"]
    finally:
        if sapi.get(f"/1.0/instances/{name}", params={"project": proj}).status_code == 200:
            lxc(sstack, "delete", "--force", name, "--project", proj, check=False)
        lxc(sstack, "project", "delete", proj, check=False)


def test_pylxd(world, sstack, sapi):
    pylxd = pytest.importorskip("pylxd")
    if world.pool_driver != "btrfs":
        pytest.skip("pylxd's calls do not depend on the pool")
    name = world.create("pylxd")
    client = pylxd.Client(endpoint=str(sstack.socket))
    inst = client.instances.get(name)
    snap = inst.snapshots.create("p0", wait=True)
    assert [s.name for s in inst.snapshots.all()] == ["p0"]
    assert inst.snapshots.get("p0").name == "p0"
    (rootfs(world, name) / "root").mkdir(exist_ok=True)
    (rootfs(world, name) / "root" / "later").write_text("x")
    inst.restore_snapshot("p0", wait=True)
    assert not (rootfs(world, name) / "root" / "later").exists()
    snap.rename("p1", wait=True)
    assert [s.name for s in inst.snapshots.all()] == ["p1"]
    inst.snapshots.get("p1").delete(wait=True)
    assert inst.snapshots.all() == []


def test_storage_killed_mid_restore_keeps_the_instance_whole(world, sstack, sapi):
    """The storage service dies inside the restore (its copy made, before the swap): the
    operation fails, the instance keeps its root volume, content and config, and a running
    instance runs again."""
    if world.pool_driver != "btrfs":
        pytest.skip("one driver is enough for the service's part")
    name = world.create("stkill", start=True)
    take(world, name, "s0")
    lxc(sstack, "exec", name, "--", "sh", "-c", "echo later > /root/later")
    lxc(sstack, "config", "set", name, "user.later", "yes")
    restart(sstack, "storage", fault="storage:restore_mid")
    r = sapi.put(f"/1.0/instances/{name}", json={"restore": "s0"})
    assert r.status_code == 202, r.text
    wait_dead(sstack, "storage")
    op = wait_final(sapi, r.json()["operation"])
    assert op["status"] == "Failure", op
    start_again(sstack, "storage")
    got = world.get(name)
    assert got["config"].get("user.later") == "yes"
    assert (rootfs(world, name) / "root" / "later").read_text() == "later\n"
    rec = [x for x in kv_records(sstack, "instances") if x["name"] == name][0]
    assert "restoring" not in rec
    wait_for(lambda: world.live(name)["status"] == "Running", 30,
             what="the instance to run again")
    lxc(sstack, "restore", name, "s0")  # and the restore works once storage is back
    r = lxc(sstack, "exec", name, "--", "test", "-e", "/root/later", check=False)
    assert r.returncode != 0


def test_refused_restore_changes_nothing(world, sstack, sapi):
    """A snapshot whose profile is gone cannot be restored: 400 before any change."""
    if world.pool_driver != "btrfs":
        pytest.skip("refusals do not depend on the pool")
    extra = world.prefix + "x"
    assert sapi.post("/1.0/profiles", json={"name": extra}).status_code == 200
    name = world.create("refuse")
    try:
        lxc(sstack, "profile", "add", name, extra)
        take(world, name, "s0")
        lxc(sstack, "profile", "remove", name, extra)
        assert sapi.delete(f"/1.0/profiles/{extra}").status_code == 200
        (rootfs(world, name) / "root").mkdir(exist_ok=True)
        (rootfs(world, name) / "root" / "later").write_text("x")
        before = world.get(name)
        r = sapi.put(f"/1.0/instances/{name}", json={"restore": "s0"})
        assert r.status_code == 400 and extra in r.json()["error"], r.text
        assert world.get(name) == before
        assert (rootfs(world, name) / "root" / "later").exists()
    finally:
        sapi.delete(f"/1.0/profiles/{extra}")


def test_crash_mid_snapshot_delete_and_rename(world, sstack, sapi):
    """Killed after marking a delete (the record says ``deleting``): at start the volume
    snapshot and the record go. Killed after renaming the volume snapshot, before the
    records: at start the record follows the disk."""
    if world.pool_driver != "btrfs":
        pytest.skip("the journal does not depend on the pool")
    name = world.create("crdel")
    take(world, name, "gone")
    take(world, name, "old")
    restart(sstack, "instance", fault="snapshot:delete_marked")
    r = sapi.delete(f"/1.0/instances/{name}/snapshots/gone")
    assert r.status_code == 202, r.text
    wait_dead(sstack, "instance")
    assert snap_dir(world, name, "gone").is_dir()  # killed before the volume went
    start_again(sstack, "instance")
    wait_for(lambda: not snap_dir(world, name, "gone").exists() and
             [x["name"] for x in snapshot_records(world, name)] == ["old"], 30,
             what="the interrupted delete to be finished")
    restart(sstack, "instance", fault="snapshot:rename_after_volume")
    r = sapi.post(f"/1.0/instances/{name}/snapshots/old", json={"name": "new"})
    assert r.status_code == 202, r.text
    wait_dead(sstack, "instance")
    assert snap_dir(world, name, "new").is_dir()
    assert [x.get("renaming_to") for x in snapshot_records(world, name)] == ["new"]
    start_again(sstack, "instance")
    wait_for(lambda: [(x["name"], x.get("renaming_to")) for x in
                      snapshot_records(world, name)] == [("new", None)], 30,
             what="the interrupted rename to be finished")
    assert snaps(world, name) == ["new"]
    lxc(sstack, "restore", name, "new")


def test_restore_of_a_frozen_container(world, sstack, sapi):
    """A frozen (paused) container is stopped, restored and started like a running one."""
    if world.pool_driver != "btrfs":
        pytest.skip("pausing does not depend on the pool")
    name = world.create("frozen", start=True)
    take(world, name, "s0")
    lxc(sstack, "exec", name, "--", "touch", "/root/later")
    lxc(sstack, "pause", name)
    assert world.live(name)["status"] == "Frozen"
    lxc(sstack, "restore", name, "s0")
    assert world.live(name)["status"] == "Running"
    r = lxc(sstack, "exec", name, "--", "test", "-e", "/root/later", check=False)
    assert r.returncode != 0


def test_crash_before_the_volume_of_a_running_restore(world, sstack, sapi):
    """Killed once the running instance was stopped for a restore, before its volume was
    touched: the next start does the restore it was asked for and starts it again."""
    if world.pool_driver != "btrfs":
        pytest.skip("the journal does not depend on the pool")
    name = world.create("crrun", start=True)
    take(world, name, "s0")
    lxc(sstack, "exec", name, "--", "touch", "/root/later")
    restart(sstack, "instance", fault="restore:before_volume")
    r = sapi.put(f"/1.0/instances/{name}", json={"restore": "s0"})
    assert r.status_code == 202, r.text
    wait_dead(sstack, "instance")
    assert (rootfs(world, name) / "root" / "later").exists()  # not restored yet
    start_again(sstack, "instance")
    wait_for(lambda: world.live(name)["status"] == "Running" and
             not (rootfs(world, name) / "root" / "later").exists(), 30,
             what="the interrupted restore to be finished and the instance started")
    rec = [x for x in kv_records(sstack, "instances") if x["name"] == name][0]
    assert "restoring" not in rec


def test_restricted_project_blocks_snapshots(world, sstack, sapi):
    """``restricted.snapshots`` (LXD): a restricted project takes no snapshots unless it is
    set to ``allow`` (``block`` by default); an unrestricted project ignores it; other
    values are refused."""
    if world.pool_driver != "btrfs":
        pytest.skip("projects do not depend on the pool")
    proj = world.prefix + "rs"
    lxc(sstack, "project", "create", proj, "-c", "features.images=false",
        "-c", "restricted=true")
    name = world.name("rsnap")
    try:
        lxc(sstack, "init", world.image, name, "--project", proj, "-s", world.pool)
        r = lxc(sstack, "snapshot", name, "s0", "--project", proj, check=False)
        assert r.returncode != 0
        assert f'Project "{proj}" doesn\'t allow for snapshot creation' in r.stderr, r.stderr
        assert "restricted.snapshots=allow" in r.stderr
        r = sapi.post(f"/1.0/instances/{name}/snapshots", params={"project": proj},
                      json={"name": "s0"})
        assert r.status_code == 400, r.text
        assert sapi.get(f"/1.0/instances/{name}/snapshots",
                        params={"project": proj}).json()["metadata"] == []
        assert not snap_dir(world, f"{proj}_{name}", "s0").exists()
        r = lxc(sstack, "project", "set", proj, "restricted.snapshots=maybe", check=False)
        assert r.returncode != 0 and "restricted.snapshots" in r.stderr
        lxc(sstack, "project", "set", proj, "restricted.snapshots=allow")
        lxc(sstack, "snapshot", name, "s0", "--project", proj)
        lxc(sstack, "project", "set", proj, "restricted.snapshots=block")
        r = lxc(sstack, "snapshot", name, "s1", "--project", proj, check=False)
        assert r.returncode != 0 and "allow for snapshot creation" in r.stderr
        lxc(sstack, "project", "set", proj, "restricted=false")  # the key then means nothing
        lxc(sstack, "snapshot", name, "s1", "--project", proj)
        got = sapi.get(f"/1.0/instances/{name}/snapshots", params={"project": proj}).json()
        assert [u.split("?")[0].rsplit("/", 1)[-1] for u in got["metadata"]] == ["s0", "s1"]
    finally:
        if sapi.get(f"/1.0/instances/{name}", params={"project": proj}).status_code == 200:
            lxc(sstack, "delete", "--force", name, "--project", proj, check=False)
        lxc(sstack, "project", "delete", proj, check=False)


def test_corral_info_lists_snapshots_and_backups(world, sstack, sapi):
    """``corral info c1``: the instance's snapshots (name, taken, expiry, stateful) and
    backups, as ``lxc info`` lists them; neither section without one."""
    import yaml

    if world.pool_driver != "btrfs":
        pytest.skip("the listing does not depend on the pool")
    name = world.create("cinfo")
    doc = yaml.safe_load(corral(sstack, "info", name).stdout)
    assert "Snapshots" not in doc and "Backups" not in doc
    take(world, name, "s0")
    take(world, name, "s1", expires_at="2099-01-02T03:04:05Z")
    world.wait(sapi.post(f"/1.0/instances/{name}/backups", json={"name": "b0"}))
    doc = yaml.safe_load(corral(sstack, "info", name).stdout)
    got = {s["Name"]: s for s in doc["Snapshots"]}
    assert list(got) == ["s0", "s1"]
    assert got["s0"]["Expires at"] == "" and got["s0"]["Stateful"] == "NO"
    assert str(got["s1"]["Expires at"]).startswith("2099-01-02")
    assert got["s0"]["Taken at"]
    assert [b["Name"] for b in doc["Backups"]] == ["b0"]
    assert doc["Backups"][0]["Instance only"] == "NO"
    lxc_out = lxc(sstack, "info", name).stdout  # the stock client lists the same
    assert "| s0 " in lxc_out and "| s1 " in lxc_out and "| b0 " in lxc_out
    world.remove(name)


def test_snapshot_size(world, sstack, sapi):
    """A snapshot's ``size`` is what only it holds: on btrfs its qgroup's exclusive bytes
    (a file deleted from the instance since is counted), -1 on dir (LXD: the pool cannot
    tell); the same through the list (recursion), the object and ``lxc query``."""
    name = world.create("size")
    data = os.urandom(3 * 2**20)
    (rootfs(world, name) / "big.bin").write_bytes(data)
    take(world, name, "s0")
    (rootfs(world, name) / "big.bin").unlink()
    subprocess.run(["sync"], check=True)

    def size() -> int:
        one = sapi.get(f"/1.0/instances/{name}/snapshots/s0").json()["metadata"]["size"]
        listed = sapi.get(f"/1.0/instances/{name}/snapshots",
                          params={"recursion": 1}).json()["metadata"][0]["size"]
        assert isinstance(one, int) and isinstance(listed, int)
        return min(one, listed)

    if world.pool_driver == "dir":
        assert size() == -1
    else:
        wait_for(lambda: size() >= len(data), 30, what="the snapshot's exclusive bytes")
        assert size() < 2 * len(data)
        got = lxc(sstack, "query", f"/1.0/instances/{name}/snapshots/s0").stdout
        assert '"size": ' in got and '"size": -1' not in got and '"size": 0,' not in got
    world.remove(name)


def test_snapshot_size_in_the_instance_object(world, sstack, sapi):
    """The instance's full object (GET ?recursion=1, lists with recursion=2) carries its
    snapshots with the same size as the snapshot object, as LXD's RenderFull."""
    name = world.create("fsize")
    (rootfs(world, name) / "big.bin").write_bytes(os.urandom(2**20))
    take(world, name, "s0")
    (rootfs(world, name) / "big.bin").unlink()
    subprocess.run(["sync"], check=True)

    def sizes() -> tuple[int, int, int]:
        own = sapi.get(f"/1.0/instances/{name}/snapshots/s0").json()["metadata"]["size"]
        full = sapi.get(f"/1.0/instances/{name}", params={"recursion": 1}).json()
        listed = [o for o in sapi.get("/1.0/instances", params={"recursion": 2}).json()[
            "metadata"] if o["name"] == name]
        return (own, full["metadata"]["snapshots"][0]["size"],
                listed[0]["snapshots"][0]["size"])

    if world.pool_driver == "dir":
        assert sizes() == (-1, -1, -1)
    else:
        wait_for(lambda: min(sizes()) >= 2**20, 30, what="the snapshot's size everywhere")
    world.remove(name)


def test_restricted_project_skips_scheduled_snapshots(world, sstack, sapi):
    """As LXD's schedule task: an instance of a project whose restricted.snapshots blocks
    snapshots is skipped quietly (no snapshot, no warning every pass); allowed, the same
    schedule takes its snapshot."""
    if world.pool_driver != "btrfs":
        pytest.skip("projects do not depend on the pool")
    proj = world.prefix + "rq"
    lxc(sstack, "project", "create", proj, "-c", "features.images=false",
        "-c", "restricted=true")
    name = world.name("rsched")
    log = sstack.dir / "logs" / "instance.log"
    try:
        lxc(sstack, "init", world.image, name, "--project", proj, "-s", world.pool,
            "-c", "snapshots.schedule=@startup")
        mark = log.stat().st_size
        lxc(sstack, "start", name, "--project", proj)
        wait_passes(log, log.stat().st_size, 2)  # one a second here
        listed = sapi.get(f"/1.0/instances/{name}/snapshots", params={"project": proj})
        assert listed.json()["metadata"] == []
        with log.open() as f:
            f.seek(mark)
            assert "scheduled snapshot failed" not in f.read()
        lxc(sstack, "stop", name, "--force", "--project", proj)
        lxc(sstack, "project", "set", proj, "restricted.snapshots=allow")
        lxc(sstack, "start", name, "--project", proj)
        wait_for(lambda: len(sapi.get(f"/1.0/instances/{name}/snapshots", params={
            "project": proj}).json()["metadata"]) == 1, 15, what="the @startup snapshot")
    finally:
        if sapi.get(f"/1.0/instances/{name}", params={"project": proj}).status_code == 200:
            lxc(sstack, "delete", "--force", name, "--project", proj, check=False)
        lxc(sstack, "project", "delete", proj, check=False)
