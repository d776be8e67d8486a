"""The separate-mode stack's memory: services forked from a fork server (shared/forkserver.py).

`make up` (deploy/up.sh) starts a fork server that imports what every service imports,
then forks each service from it, so those pages are shared copy-on-write instead of paid
seven times (docs/performance.md "Memory"). These tests run deploy/up.sh and down.sh for
real, in a private CORRAL_DIR on a free NATS port (tests/test_deploy.py's Deployment), and
check what must stay true of each service: it is its own process (own session, parent not
the fork server, its own program in cmdline, nothing of the fork server's open), runs this
checkout's code (its Python stack, read by py-spy, is in this checkout's files and starts in
the fork server), really shares the fork server's pages (physical frames from
/proc/PID/pagemap), outlives a `kill -9` of the fork server, and is started again by
`make up` through the fork server or, without one, standalone.

Not a timing test. Tests of the services themselves keep starting them standalone
(tests/stack.py): a fault test kills a service's own program, and its exit status is read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.memory import frames, unique_kib
from shared import forkserver
from tests.stack import Forked, NatsServer, Stack, wait_for
from tests.test_deploy import Deployment, alive, get, ok, procs_of

ROOT = Path(__file__).resolve().parent.parent
APPS = ["image", "storage", "network", "instance", "migration", "hooks", "gateway"]
PY_SPY = Path(sys.executable).parent / "py-spy"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("footprint"))
    d.dir.parent.mkdir()
    try:
        ok(d.run("up.sh", CORRAL_MODE="separate"))
        yield d
        ok(d.run("down.sh"))
    finally:
        d.kill_leftovers()


def stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from the state on (fields[1] is the parent, [3] session)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def sockets(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return {t for t in out if t.startswith("socket:")}


def test_every_service_is_forked_from_the_fork_server_as_its_own_process(deployed):
    pids = deployed.pids()
    assert set(pids) == {"nats", "forkserver", *APPS}
    server = pids["forkserver"]
    assert "shared.forkserver" in Path(f"/proc/{server}/cmdline").read_text()
    server_sockets = sockets(server)
    for name in APPS:
        pid = pids[name]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode().endswith(f"/bin/corral-{name}"), (name, cmdline)
        assert Path(f"/proc/{pid}/comm").read_text().strip() == f"corral-{name}"[:15]
        fields = stat(pid)
        assert int(fields[1]) != server, name  # forked twice: init is its parent
        assert int(fields[3]) == pid, name  # a session of its own, as `setsid` gives
        # nothing of the fork server's: not its listening socket, no other descriptor
        assert not sockets(pid) & server_sockets, name
        fds = {int(fd.name) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        assert {0, 1, 2} <= fds
        assert os.readlink(f"/proc/{pid}/fd/1") == str(deployed.dir / "logs" / f"{name}.log")
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    status, body = get(deployed.dir / "unix.socket", "/1.0/instances")
    assert status == 200, body


@pytest.mark.skipif(not PY_SPY.exists(), reason="py-spy is not installed in the venv")
def test_a_forked_service_runs_this_checkouts_code(deployed):
    pid = deployed.pids()["image"]
    dump = subprocess.run([PY_SPY, "dump", "--full-filenames", "--pid", str(pid)],
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    # its main thread runs the service loop, from this checkout, under the fork server's
    assert f"{ROOT}/shared/service.py" in dump.stdout, dump.stdout
    assert f"{ROOT}/shared/forkserver.py" in dump.stdout, dump.stdout
    assert "EpollSelector.select" in dump.stdout  # an event loop of its own, idle


def test_services_share_the_fork_servers_pages(deployed):
    """What the fork server exists for: each service still holds, copy-on-write, several
    MiB of the very physical pages the fork server imported (a standalone service shares
    only library file pages with it, ~5 MiB, none anonymous), and the stack costs less
    than the sum of its processes."""
    pids = deployed.pids()
    server = frames(pids["forkserver"])
    anon = anonymous_frames(pids["forkserver"])
    for name in APPS:
        common = frames(pids[name]) & anon
        assert len(common) * 4 >= 8 * 1024, (name, len(common) * 4 // 1024)
    apps = [pids[n] for n in APPS]
    alone = unique_kib([pids["forkserver"], *apps])
    assert alone is not None
    assert alone + 7 * 8 * 1024 < sum(len(frames(p)) * 4 for p in apps) + len(server) * 4


def anonymous_frames(pid: int) -> set[int]:
    """Frames of ``pid``'s heap and anonymous mappings (the imported objects live there)."""
    import array

    out: set[int] = set()
    lo = hi = 0
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 or (len(parts) == 6 and parts[5] == "[heap]"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                pagemap.seek(lo // 4096 * 8)
                entries = array.array("Q", pagemap.read((hi - lo) // 4096 * 8))
                out.update(e & ((1 << 55) - 1) for e in entries if e >> 63)
    out.discard(0)
    return out


def test_the_preload_leaves_out_what_services_load_only_when_used():
    """The fork server imports nothing a service loads at first use (each child would map
    it: tests/test_fast_paths.py), starts no thread and reads no configuration."""
    code = ("import sys, threading; from shared import forkserver; forkserver.preload(); "
            "from shared.config import get_config; "
            "print(threading.active_count(), forkserver.threads(), "
            "get_config.cache_info().currsize); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    counts, modules = out.stdout.splitlines()
    assert counts.split() == ["1", "1", "0"]
    # "pyroute2" itself is there: lean.prepare()'s stand-in for the package, no code run
    loaded = {m.split(".")[0] for m in modules.split() if m != "pyroute2"}
    assert not loaded & {"aiohttp", "jinja2", "libvirt", "pyroute2", "lxc", "_lxc", "rich",
                         "httpx", "croniter", "services"}, loaded
    assert {"nats", "pydantic", "structlog", "opentelemetry", "shared"} <= loaded


def test_the_fork_server_knows_when_its_preloaded_code_changed(tmp_path):
    """After an update of the checkout a long-running fork server would fork old shared
    code under a new service: it sees the change (and refuses, so `make up` starts the
    service standalone, with the new code throughout)."""
    (tmp_path / "fsprobe.py").write_text("X = 1\n")
    code = ("import os, sys; from shared import forkserver; "
            "forkserver.preload(('fsprobe',)); print(forkserver.changed()); "
            f"os.utime({str(tmp_path / 'fsprobe.py')!r}, ns=(1, 1)); "
            "print(forkserver.changed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["None", str(tmp_path / "fsprobe.py")]


def test_the_fork_server_refuses_what_it_does_not_start(deployed):
    sock = deployed.dir / "run" / "forkserver.sock"
    assert sock.stat().st_mode & 0o077 == 0  # root's only
    before = procs_of(deployed.dir)
    log = str(deployed.dir / "logs" / "x.log")
    with pytest.raises(forkserver.Refused, match="unknown program 'sshd'"):
        forkserver.spawn(sock, "sshd", Path(log), "/bin/sshd")
    with pytest.raises(forkserver.Refused, match="cwd must be an absolute path"):
        forkserver.spawn(sock, "image", Path(log), "/x/corral-image", cwd="relative")
    with pytest.raises(forkserver.Refused, match="does not fit"):
        forkserver.spawn(sock, "image", Path(log), "/" + "x" * 4096)
    with socket.socket(socket.AF_UNIX) as s:  # not JSON at all
        s.connect(str(sock))
        s.sendall(b"start image please\n")
        assert "error" in json.loads(s.makefile().readline())
    assert procs_of(deployed.dir) == before and not Path(log).exists()


def test_kill_9_of_the_fork_server_leaves_services_up_and_up_starts_them_again(deployed):
    d = deployed
    pids = d.pids()
    os.kill(pids["forkserver"], signal.SIGKILL)
    wait_for(lambda: not alive(pids["forkserver"]), 10, what="the fork server to die")
    time.sleep(0.5)
    assert all(alive(pids[n]) for n in APPS)
    assert get(d.dir / "unix.socket", "/1.0/images")[0] == 200

    # A service dies while the fork server is gone: `make up` without one (CORRAL_FORKSERVER=0)
    # starts it standalone, as its own program.
    os.kill(pids["image"], signal.SIGKILL)
    wait_for(lambda: not alive(pids["image"]), 10, what="the image service to die")
    out = ok(d.run("up.sh", CORRAL_FORKSERVER="0"))
    assert "starting image (log:" in out and "forked" not in out, out
    image = d.pids()["image"]
    cmdline = Path(f"/proc/{image}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"/python") and cmdline[1].endswith(b"/corral-image")
    assert "forkserver" not in d.pids()
    assert get(d.dir / "unix.socket", "/1.0/images")[0] == 200
    assert {n: p for n, p in d.pids().items() if n != "image"} == {
        n: p for n, p in pids.items() if n not in ("image", "forkserver")}

    # Then `make up` brings the fork server back, and a service that dies again is forked
    # from it with the environment of the `make up` that asked (its log names the node
    # given here, not the fork server's).
    os.kill(image, signal.SIGKILL)
    wait_for(lambda: not alive(image), 10, what="the image service to die")
    out = ok(d.run("up.sh", CORRAL_NODE="fpnode"))
    assert "starting forkserver" in out and "starting image, forked" in out, out
    now = d.pids()
    assert now["forkserver"] != pids["forkserver"] and alive(now["forkserver"])
    assert b"corral-image" in Path(f"/proc/{now['image']}/cmdline").read_bytes()
    assert int(stat(now["image"])[1]) != now["forkserver"]
    assert get(d.dir / "unix.socket", "/1.0/images")[0] == 200
    started = [json.loads(line) for line in (d.dir / "logs" / "image.log").read_text()
               .splitlines() if '"service started"' in line]
    assert started[-1]["node"] == "fpnode" and started[0]["node"] != "fpnode", started
    # the others kept running throughout
    assert all(now[n] == pids[n] for n in APPS if n != "image")


@pytest.mark.timeout(120)
def test_down_stops_the_fork_server_and_single_mode_has_none(tmp_path):
    d = Deployment(tmp_path)
    d.dir.parent.mkdir()
    try:
        ok(d.run("up.sh"))
        pids = d.pids()
        assert "forkserver" in pids
        ok(d.run("down.sh"))
        assert not any(alive(p) for p in pids.values()) and d.pids() == {}
        assert not (d.dir / "run" / "forkserver.sock").exists()
        assert procs_of(d.dir) == set()
        ok(d.run("up.sh", CORRAL_MODE="single"))
        assert set(d.pids()) == {"nats", "all"}
        ok(d.run("down.sh"))
        assert procs_of(d.dir) == set()
    finally:
        d.kill_leftovers()


@pytest.mark.timeout(240)
def test_the_benches_stack_forks_its_services_and_stops_them_all(tmp_path):
    """tests/stack.py's ``Stack(forkserver=True)``, as `make bench` runs separate mode:
    every service forked (a pidfd follows each), all answering, and ``stop_all`` ends the
    services and the fork server alike."""
    tmp_path.chmod(0o755)
    nats = NatsServer(tmp_path / "nats", tmp_path / "corral")
    nats.start()
    stack = Stack(tmp_path / "corral", nats, forkserver=True, CORRAL_VM="0")
    try:
        stack.start_all(180)
        assert all(isinstance(p, Forked) for p in stack.procs.values()), stack.procs
        pids = [p.pid for p in stack.procs.values()]
        server = stack.forkserver.pid
        assert all(alive(p) for p in pids) and alive(server)
        assert all(b"corral-" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)
    finally:
        stack.stop_all()
        nats.stop()
    assert not any(alive(p) for p in [*pids, server])
