"""The LXC instance driver against real containers (busybox rootfs, unprivileged).

Every container is named ``crt`` + hex and lives in a tmp lxcpath; finalizers stop and
remove them even when a test fails. Nothing here touches the network.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

lxc = pytest.importorskip("lxc")

from services.instance import idmap as idmaps  # noqa: E402
from services.instance import limits  # noqa: E402
from services.instance.drivers import cgroups  # noqa: E402
from services.instance.drivers.base import InstanceSpec  # noqa: E402
from services.instance.drivers.lxc import LXCDriver  # noqa: E402
from shared.errors import BadRequest, Conflict, Forbidden, Internal  # noqa: E402

pytestmark = pytest.mark.root
BUSYBOX = Path("/bin/busybox")
if os.geteuid() != 0 or not BUSYBOX.exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


def _uid() -> str:
    return "crt" + secrets.token_hex(3)[:5]


def make_rootfs(path: Path) -> Path:
    """A busybox system: init from busybox, proc mounted, one respawned sleep."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root",
              "tmp", "var"):
        (path / d).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, path / "bin/busybox")
    apps = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                          check=True).stdout.split()
    for app in apps:
        link = path / app
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    (path / "etc/inittab").write_text(
        "::sysinit:/bin/mount -t proc proc /proc\n::respawn:/bin/sleep 1000000\n")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    return path


@pytest.fixture(scope="module")
def env():
    idmaps.ensure_subids()
    base = Path(tempfile.mkdtemp(prefix="crt"))
    base.chmod(0o755)  # the container's root uid must traverse to its rootfs
    drv = LXCDriver(base / "containers")
    made: list[str] = []

    def new(config=None, start=True, nic=()):
        name = _uid()
        rootfs = make_rootfs(base / "volumes" / name / "rootfs")
        made.append(name)
        drv.create(InstanceSpec(name, dict(config or {}), {}, rootfs.parent, list(nic)))
        if start:
            drv.start(name)
        return name, rootfs

    yield drv, new, base
    for name in made:
        c = lxc.Container(name, str(drv.lxcpath))
        if c.defined and c.running:
            c.stop()
            c.wait("STOPPED", 10)
        if (drv.lxcpath / name).exists():
            drv.delete(name)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def ct(env):
    drv, new, _ = env
    name, rootfs = new()
    return drv, name, rootfs


def run(drv, name, cmd, stdin=b"", **kw):
    p = drv.exec_start(name, cmd, **kw)
    out: dict[str, bytes] = {}

    def pump(key, fd):
        chunks = []
        while data := os.read(fd, 65536):
            chunks.append(data)
        out[key] = b"".join(chunks)
        os.close(fd)

    ts = [threading.Thread(target=pump, args=(k, getattr(p, k + "_fd")))
          for k in ("stdout", "stderr")]
    for t in ts:
        t.start()
    os.write(p.stdin_fd, stdin)
    os.close(p.stdin_fd)
    code = p.wait()
    for t in ts:
        t.join()
    return code, out["stdout"], out["stderr"]


def test_unprivileged_start_reports_idmap(env, ct):
    drv, name, _ = ct
    assert run(drv, name, ["ip", "link", "set", "lo", "up"])[0] == 0
    st = drv.state(name)
    assert (st["status"], st["status_code"]) == ("Running", 103)
    assert st["pid"] > 0 and st["processes"] >= 1 and st["memory"]["usage"] > 0
    assert st["cpu"]["usage"] > 0 and "lo" in st["network"]
    lo = st["network"]["lo"]
    assert {"family": "inet", "address": "127.0.0.1", "netmask": "8",
            "scope": "host"} in lo["addresses"]
    m = drv.idmap(name)
    rows = idmaps.read_proc_map(st["pid"])
    uid_range = [e for e in m.entries if e.isuid][0]
    assert rows == [(0, uid_range.hostid, uid_range.size)]
    assert '"Isuid": true' in m.to_json() and uid_range.hostid > 0
    assert drv.list_host()[name] == "Running"


def test_exec_pipes_env_cwd(ct):
    drv, name, _ = ct
    code, out, err = run(drv, name, ["sh", "-c", "cat; echo oops >&2; exit 3"], b"hello\n")
    assert (code, out, err) == (3, b"hello\n", b"oops\n")
    code, out, _ = run(drv, name, ["sh", "-c", "echo $FOO; pwd; id -u"],
                       env={"FOO": "bar baz"}, cwd="/tmp")
    assert code == 0 and out == b"bar baz\n/tmp\n0\n"
    code, out, _ = run(drv, name, ["id", "-u"], uid=1000, gid=1000)
    assert (code, out) == (0, b"1000\n")
    assert run(drv, name, ["/no/such/command"])[0] == 127


def test_exec_signal_and_pty(ct):
    drv, name, _ = ct
    p = drv.exec_start(name, ["sleep", "1000"])
    p.signal(signal.SIGKILL)
    assert p.wait() == 128 + signal.SIGKILL
    for fd in (p.stdin_fd, p.stdout_fd, p.stderr_fd):
        os.close(fd)
    p = drv.exec_start(name, ["sh", "-c", "[ -t 0 ] && echo TTY; read x; stty size"],
                       interactive=True, width=100, height=40)
    p.resize(120, 50)
    os.write(p.pty_fd, b"go\n")
    data = b""
    while True:
        try:
            chunk = os.read(p.pty_fd, 4096)
        except OSError:  # EIO once the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    os.close(p.pty_fd)
    assert p.wait() == 0
    assert b"TTY" in data and b"50 120" in data


def _cg(drv, name, ctrl, fname):
    return cgroups.CgroupPaths(drv.state(name)["pid"], name).path(ctrl, fname).read_text()


def test_memory_limit_kills_and_rollback(ct):
    drv, name, _ = ct
    drv.apply_limits_live(name, {"limits.memory": "32MiB", "limits.memory.swap": "false"})
    if cgroups.version_of("memory") == 1:
        assert int(_cg(drv, name, "memory", "memory.limit_in_bytes")) == 32 * 2**20
    code, _, _ = run(drv, name, ["sh", "-c", "head -c 100m /dev/zero | tail > /dev/null"])
    assert code != 0  # tail buffers 100 MiB and is OOM-killed
    # Hold 20 MiB, then ask for 8 MiB: refused as a whole, the old limit stays.
    p = drv.exec_start(name, ["tail"])
    blob = b"\0" * 2**20
    for _ in range(20):
        os.write(p.stdin_fd, blob)
    deadline = time.monotonic() + 10
    while drv.state(name)["memory"]["usage"] < 20 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(Conflict):
        drv.apply_limits_live(name, {"limits.memory": "8MiB"})
    if cgroups.version_of("memory") == 1:
        assert int(_cg(drv, name, "memory", "memory.limit_in_bytes")) == 32 * 2**20
        assert int(_cg(drv, name, "memory", "memory.memsw.limit_in_bytes")) == 32 * 2**20
    p.signal(signal.SIGKILL)
    assert p.wait() == 137
    for fd in (p.stdin_fd, p.stdout_fd, p.stderr_fd):
        os.close(fd)
    drv.apply_limits_live(name, {"limits.memory": "", "limits.memory.swap": ""})


def test_process_limit_and_cpu(ct):
    drv, name, _ = ct
    drv.apply_limits_live(name, {"limits.processes": "20"})
    code, _, err = run(drv, name, ["sh", "-c",
                                   "i=0; while [ $i -lt 40 ]; do sleep 3 & i=$((i+1)); done"])
    assert code != 0 and err  # fork fails once 20 tasks exist
    assert int(_cg(drv, name, "pids", "pids.max")) == 20
    drv.apply_limits_live(name, {"limits.processes": ""})
    drv.apply_limits_live(name, {"limits.cpu.allowance": "25ms/100ms", "limits.cpu": "1"})
    if cgroups.version_of("cpu") == 1:
        assert int(_cg(drv, name, "cpu", "cpu.cfs_quota_us")) == 25000
        assert int(_cg(drv, name, "cpu", "cpu.cfs_period_us")) == 100000
    assert _cg(drv, name, "cpuset", "cpuset.cpus").strip() == str(limits.host_cpus()[0])


@pytest.mark.parametrize("config", [
    {"limits.memory": "lots"}, {"limits.memory": "-1"}, {"limits.cpu": "0-99"},
    {"limits.cpu": "-1"}, {"limits.cpu.allowance": "150%"}, {"limits.processes": "-1"},
    {"limits.memory.swap": "maybe"}, {"limits.cpu.allowance": "5ms/10s"}])
def test_bad_limits_refused(config):
    with pytest.raises(BadRequest):
        limits.validate_limits(config)


def test_files_roundtrip_and_escape(ct):
    drv, name, rootfs = ct
    blob = bytes(range(256)) * 4099
    drv.file_put(name, "/root/blob.bin", blob, uid=1000, gid=1001, mode=0o640)
    got, uid, gid, mode, kind = drv.file_get(name, "/root/blob.bin")
    assert (got == blob, uid, gid, mode, kind) == (True, 1000, 1001, 0o640, "file")
    assert run(drv, name, ["stat", "-c", "%u %g %a", "/root/blob.bin"])[1] == b"1000 1001 640\n"
    drv.file_put(name, "/root/blob.bin", b"more", write="append")
    assert drv.file_get(name, "/root/blob.bin")[0] == blob + b"more"
    drv.file_put(name, "/root/dir", b"", type="directory", mode=0o700)
    drv.file_put(name, "/root/dir/link", b"/etc/passwd", type="symlink")
    listing, *_rest, kind = drv.file_get(name, "/root/dir")
    assert (listing, kind) == (["link"], "directory")
    assert drv.file_get(name, "/root/dir/link")[0] == b"/etc/passwd"
    marker = f"{name}-escape"
    with pytest.raises(Forbidden):
        drv.file_put(name, f"../../tmp/{marker}", b"x")
    run(drv, name, ["ln", "-s", "/../../..", "/tmp/esc"])
    with pytest.raises(Forbidden):
        drv.file_put(name, f"/tmp/esc/tmp/{marker}", b"x")
    with pytest.raises(Forbidden):
        drv.file_get(name, "/tmp/esc/etc/passwd")
    run(drv, name, ["ln", "-s", "/etc", "/tmp/abs"])
    drv.file_put(name, f"/tmp/abs/{marker}", b"inside")  # absolute link stays inside
    assert (rootfs / "etc" / marker).read_bytes() == b"inside"
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/etc/{marker}").exists()
    drv.file_delete(name, f"/etc/{marker}")
    assert not (rootfs / "etc" / marker).exists()


def test_lifecycle_stop_freeze_delete(env):
    drv, new, _ = env
    name, rootfs = new({"limits.memory": "64MiB", "limits.processes": "50"})
    if cgroups.version_of("memory") == 1:
        assert int(_cg(drv, name, "memory", "memory.limit_in_bytes")) == 64 * 2**20
    assert int(_cg(drv, name, "pids", "pids.max")) == 50
    drv.freeze(name)
    assert drv.state(name)["status_code"] == 110
    drv.unfreeze(name)
    assert drv.state(name)["status"] == "Running"
    with pytest.raises(Conflict):
        drv.delete(name)
    drv.stop(name, timeout=10)  # clean: busybox init handles SIGPWR
    assert drv.state(name)["status_code"] == 102
    # stopped: files go to the volume directly, ids unchanged on an idmapped root
    drv.file_put(name, "/etc/motd", b"hi\n", uid=5, gid=6)
    assert drv.file_get(name, "/etc/motd")[:3] == (b"hi\n", 5, 6)
    drv.start(name)
    assert drv.file_get(name, "/etc/motd")[:3] == (b"hi\n", 5, 6)
    drv.restart(name, force=True)
    assert drv.state(name)["status"] == "Running"
    drv.stop(name, force=True)
    assert drv.state(name)["status"] == "Stopped"
    assert isinstance(drv.console_log(name), bytes)
    drv.delete(name)
    assert not (drv.lxcpath / name).exists() and (rootfs / "bin/busybox").exists()
    assert name not in drv.list_host()


def test_create_and_start_failures_clean_up(env):
    drv, new, base = env
    rootfs = make_rootfs(base / "volumes" / "crtbad" / "rootfs")
    with pytest.raises(BadRequest):
        drv.create(InstanceSpec("crtbad" + secrets.token_hex(2), {"raw.lxc": "nonsense"}, {},
                                rootfs.parent))
    assert not [p for p in drv.lxcpath.iterdir() if p.name.startswith("crtbad")]
    with pytest.raises(BadRequest):
        drv.create(InstanceSpec("bad/name", {}, {}, rootfs.parent))
    name, _ = new({"raw.lxc": "lxc.init.cmd = /no/such/init"}, start=False)
    with pytest.raises(Internal) as exc:
        drv.start(name)
    assert "start" in exc.value.message
    assert drv.state(name)["status"] == "Stopped"
    drv.delete(name)


def test_chown_fallback_when_idmapped_mounts_unavailable(env):
    drv0, _, base = env
    drv = LXCDriver(drv0.lxcpath, idmapped_mounts=False)
    name = _uid()
    rootfs = make_rootfs(base / "volumes" / name / "rootfs")
    try:
        drv.create(InstanceSpec(name, {}, {}, rootfs.parent))
        host_root = drv.idmap(name).uid_to_host(0)
        assert (rootfs / "etc/inittab").stat().st_uid == host_root
        drv.start(name)
        drv.file_put(name, "/root/f", b"x", uid=7, gid=8)
        assert drv.file_get(name, "/root/f")[1:3] == (7, 8)
        assert (rootfs / "root/f").stat().st_uid == host_root + 7
        assert run(drv, name, ["stat", "-c", "%u", "/etc/inittab"])[1] == b"0\n"
    finally:
        c = lxc.Container(name, str(drv.lxcpath))
        if c.running:
            c.stop()
            c.wait("STOPPED", 10)
        if (drv.lxcpath / name).exists():
            drv.delete(name)


def test_forced_stop_and_start_leave_other_threads_running(env):
    """python-lxc keeps the GIL for all of ``start`` and ``stop`` (50-200 ms each), which
    froze the whole instance service; the driver's start (lxc-start) and forced stop
    (a pidfd SIGKILL, then waiting for the monitor in select) must not."""
    drv, new, _ = env
    name, _ = new(start=False)

    def longest_gap(fn) -> tuple[float, float]:
        gaps: list[float] = []
        done = threading.Event()

        def tick():
            last = time.perf_counter()
            while not done.is_set():
                time.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        t = threading.Thread(target=tick)
        t.start()
        time.sleep(0.02)
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        done.set()
        t.join()
        return took, max(gaps)

    took, gap = longest_gap(lambda: drv.start(name))
    assert gap < 0.6 * took, (took, gap)
    pid = drv.state(name)["pid"]
    took, gap = longest_gap(lambda: drv.stop(name, force=True))
    assert gap < 0.6 * took, (took, gap)
    assert drv.state(name)["status"] == "Stopped"
    assert not Path(f"/proc/{pid}").exists()
    assert name not in lxc.list_containers(active=True, defined=False,
                                           config_path=str(drv.lxcpath))
    drv.start(name)  # nothing left behind that blocks the next start
    drv.stop(name, force=True)
    drv.delete(name)


def _wait_lxc(drv, name, state, timeout=15):
    c = lxc.Container(name, str(drv.lxcpath))
    assert c.wait(state, timeout), f"{name} not {state}: {c.state}"
    return c


def test_state_many_follows_changes_made_behind_the_driver(env):
    """A list's states (one list_containers pass, cached handles and init pids) show what
    happened outside the driver at once: a stop from inside, a restart (a new init pid,
    never the cached one), lxc-freeze, a forced stop, a config LXC cannot load."""
    drv, new, _ = env
    name, _ = new()
    missing = _uid()
    s = drv.state_many([name, missing])
    assert missing not in s
    pid = lxc.Container(name, str(drv.lxcpath)).init_pid
    assert (s[name]["status"], s[name]["status_code"], s[name]["pid"]) == ("Running", 103, pid)
    assert s[name]["pid"] == drv.state(name)["pid"] == drv.state_many([name])[name]["pid"]

    drv.exec_start(name, ["poweroff"]).wait()  # from inside: busybox init shuts down
    _wait_lxc(drv, name, "STOPPED")
    s = drv.state_many([name])[name]
    assert (s["status"], s["status_code"], s["pid"]) == ("Stopped", 102, 0)
    assert drv.list_host()[name] == "Stopped" and drv.state(name)["status"] == "Stopped"

    drv.start(name)
    new_pid = lxc.Container(name, str(drv.lxcpath)).init_pid
    assert new_pid != pid
    assert drv.state_many([name])[name]["pid"] == new_pid == drv.state(name)["pid"]

    c = lxc.Container(name, str(drv.lxcpath))
    assert c.freeze()  # as lxc-freeze, not through the driver
    s = drv.state_many([name])[name]
    assert (s["status"], s["status_code"]) == ("Frozen", 110)
    assert drv.list_host()[name] == "Frozen"
    assert c.unfreeze()
    assert drv.state_many([name])[name]["status"] == "Running"

    assert c.stop()  # as lxc-stop --kill
    _wait_lxc(drv, name, "STOPPED")
    assert drv.state_many([name])[name]["status"] == "Stopped"

    config = drv.lxcpath / name / "config"
    good = config.read_text()
    config.write_text(good + "lxc.tty.max = many\n")
    try:
        s = drv.state_many([name])[name]
        assert (s["status"], s["status_code"]) == ("Error", 112)
        assert drv.state(name)["status"] == "Error" and drv.host_status(name) == "Error"
    finally:
        config.write_text(good)
    assert drv.state_many([name])[name]["status"] == "Stopped"
    assert drv.host_status(name) == "Stopped"
    drv.delete(name)
    assert drv.state_many([name]) == {}
