"""Deployment: deploy/up.sh and down.sh for real, the NATS configs (one node and a real
three-node cluster), and the shipped-only files (systemd units, compose.yaml, Makefile).

The up/down tests run the scripts exactly as `make up`/`make down` do, in a private
CORRAL_DIR (named crt<hex>) on a free NATS port, so they run beside a developer's stack.
Whatever they start is killed by PID in a finalizer, and only when the process's
environment names that CORRAL_DIR.
"""

from __future__ import annotations

import asyncio
import configparser
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import nats
import pytest
import yaml

from shared import auth

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NATS_BIN = Path(sys.executable).parent / "nats-server"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SERVICES = ["image", "storage", "network", "instance", "migration", "hooks"]
HOST_SERVICES = {"storage", "network", "instance"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Running and not a zombie (orphans of up.sh may wait a moment for their reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def procs_of(corral_dir: Path) -> set[int]:
    """Every live process whose environment carries CORRAL_DIR=<corral_dir>."""
    needle = f"CORRAL_DIR={corral_dir}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    if alive(int(entry.name)):
                        found.add(int(entry.name))
            except OSError:
                pass
    return found


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("corral", timeout=10)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def get(sock: Path, url: str) -> tuple[int, dict]:
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


class Deployment:
    """A private CORRAL_DIR and NATS port, and the scripts run against them."""

    def __init__(self, base: Path) -> None:
        self.dir = base / f"crt{uuid.uuid4().hex[:5]}" / "var"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("CORRAL_NATS_URL", "CORRAL_MODE", "CORRAL_CONFIG")}
        self.env.update(CORRAL_DIR=str(self.dir), CORRAL_NATS_PORT=str(free_port()),
                        CORRAL_SKIP_INSTALL="1",  # the venv running this test is current
                        # No default bridge/pool/image here: bridges are host-global and
                        # `make up` beside the suite owns corralbr0. `corral init --auto`
                        # is tested against the session stack instead (test_init.py).
                        CORRAL_BOOTSTRAP="0",
                        # libvirtd is host-global: tests/test_qemu_driver.py covers
                        # deploy/libvirt.sh, this file the rest of up/down.
                        CORRAL_VMS="0")

    def run(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DEPLOY / script)], env={**self.env, **env}, text=True,
                              capture_output=True, timeout=120, cwd=self.dir.parent)

    def pids(self) -> dict[str, int]:
        run = self.dir / "run"
        return {p.stem: int(p.read_text()) for p in run.glob("*.pid")} if run.is_dir() else {}

    def kill_leftovers(self) -> None:
        for pid in procs_of(self.dir):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path)
    d.dir.parent.mkdir()
    yield d
    d.kill_leftovers()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["separate", "single"])
def test_up_twice_then_down_twice(deployment, mode):
    d = deployment
    # A stale pid file naming a live stranger (this test) must be replaced, not trusted.
    (d.dir / "run").mkdir(parents=True)
    (d.dir / "run" / ("gateway.pid" if mode == "separate" else "all.pid")).write_text(
        f"{os.getpid()}\n")

    ok(d.run("up.sh", CORRAL_MODE=mode))
    pids = d.pids()
    apps = SERVICES + ["gateway"] if mode == "separate" else ["all"]
    # separate mode forks the services from a fork server (tests/test_footprint.py)
    assert set(pids) == {"nats", *apps, *(["forkserver"] if mode == "separate" else [])}
    assert os.getpid() not in pids.values()
    for name, pid in pids.items():
        program = {"nats": "nats-server", "forkserver": "shared.forkserver"}.get(
            name, f"corral-{name}")
        assert program in Path(f"/proc/{pid}/cmdline").read_text(), name
    status, body = get(d.dir / "unix.socket", "/1.0")
    assert status == 200 and body["metadata"]["api_version"] == "1.0"
    running = procs_of(d.dir)
    assert set(pids.values()) <= running

    second = ok(d.run("up.sh", CORRAL_MODE=mode))
    assert "starting" not in second
    assert d.pids() == pids and procs_of(d.dir) == running

    ok(d.run("down.sh"))
    assert not any(alive(pid) for pid in pids.values())
    assert d.pids() == {}
    assert (d.dir / "nats" / "jetstream").is_dir()
    assert (d.dir / "logs" / f"{apps[-1]}.log").stat().st_size > 0

    (d.dir / "run" / "nats.pid").write_text(f"{os.getpid()}\n")  # stale: not ours
    out = ok(d.run("down.sh"))
    assert "stopping" not in out and d.pids() == {}


@pytest.mark.timeout(90)
def test_up_warns_about_a_nats_started_without_authorization(deployment):
    """A nats-server of this CORRAL_DIR from before bus authorization is kept (its clients
    keep working) but `up` says it admits anonymous clients and how to fix that."""
    d = deployment
    port = d.env["CORRAL_NATS_PORT"]
    (d.dir / "run").mkdir(parents=True)
    (d.dir / "logs").mkdir()
    with open(d.dir / "logs" / "nats.log", "wb") as log:
        old = subprocess.Popen([NATS_BIN, "-a", "127.0.0.1", "-p", port, "-js", "-sd",
                                d.dir / "nats"], env={**d.env}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    (d.dir / "run" / "nats.pid").write_text(f"{old.pid}\n")
    out = ok(d.run("up.sh"))
    assert "started before bus authorization" in out and "make down" in out
    assert d.pids()["nats"] == old.pid and old.poll() is None
    ok(d.run("down.sh"))
    assert old.wait(10) is not None


def test_down_with_nothing_leaves_no_trace(deployment):
    ok(deployment.run("down.sh"))
    assert not deployment.dir.exists()


@pytest.mark.timeout(60)
def test_up_refuses_bad_mode_and_busy_port(deployment):
    bad = deployment.run("up.sh", CORRAL_MODE="cluster")
    assert bad.returncode != 0 and "CORRAL_MODE='cluster'" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = deployment.run("up.sh", CORRAL_NATS_PORT=str(taken.getsockname()[1]))
    assert busy.returncode != 0 and "CORRAL_NATS_PORT" in busy.stderr
    assert deployment.pids() == {} and procs_of(deployment.dir) == set()


def nats_env(**values: object) -> dict[str, str]:
    return {**os.environ, **{f"CORRAL_NATS_{k}": str(v) for k, v in values.items()}}


def test_nats_configs_are_valid(tmp_path):
    # Alone the repository's file does not start: without auth.conf there are no users.
    bare = subprocess.run([NATS_BIN, "-t", "-c", DEPLOY / "nats" / "single.conf"],
                          env=nats_env(PORT=4222, STORE_DIR=tmp_path),
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "auth.conf" in bare.stderr
    auth.init(tmp_path)
    for conf in ("single.conf", "cluster-node1.conf"):
        linked = auth.link_config(tmp_path, DEPLOY / "nats" / conf)
        check = subprocess.run([NATS_BIN, "-t", "-c", linked], capture_output=True, text=True,
                               env=nats_env(PORT=4222, STORE_DIR=tmp_path, CLUSTER_HOST="127.0.0.1",
                                            CLUSTER_PORT=6222, ROUTES="[]"))
        assert check.returncode == 0, check.stderr


@pytest.mark.timeout(60)
async def test_nats_three_node_cluster_replicates_kv(tmp_path):
    client, route = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    base = tmp_path / f"crt{uuid.uuid4().hex[:5]}"
    servers: list[subprocess.Popen[bytes]] = []
    # One set of users for the three nodes (a real cluster copies auth.conf and
    # route-auth.conf to every node); routes authenticate as the route user.
    auth.init(base)
    routes = auth.route_urls(base, [f"127.0.0.1:{p}" for p in route])
    admin = json.loads(auth.Paths(base).credentials(auth.ADMIN).read_text())
    try:
        for i in range(3):
            (base / f"n{i + 1}").mkdir(parents=True)
            env = nats_env(PORT=client[i], STORE_DIR=base / f"n{i + 1}", CLUSTER_HOST="127.0.0.1",
                           CLUSTER_PORT=route[i], ROUTES=routes)
            conf = auth.link_config(base, DEPLOY / "nats" / f"cluster-node{i + 1}.conf")
            with open(base / f"n{i + 1}.log", "wb") as log:
                servers.append(subprocess.Popen(
                    [NATS_BIN, "-c", conf], env=env, stdout=log, stderr=subprocess.STDOUT))
        for p in client:  # every client listener refuses an anonymous connection
            with pytest.raises(Exception, match="Authorization Violation"):
                deadline = time.monotonic() + 15
                while True:
                    try:
                        await (await nats.connect(f"nats://127.0.0.1:{p}", connect_timeout=1,
                                                  allow_reconnect=False)).close()
                        break
                    except OSError:  # not listening yet
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.1)
        with socket.create_connection(("127.0.0.1", route[0]), timeout=2) as raw:
            # A route without the route user's password is turned away too.
            raw.recv(4096)
            raw.sendall(b'CONNECT {"verbose":false,"name":"intruder"}\r\nPING\r\n')
            assert b"Authorization Violation" in raw.recv(4096)
        nc = await nats.connect([f"nats://127.0.0.1:{p}" for p in client],
                                connect_timeout=2, max_reconnect_attempts=30,
                                user=admin["user"], password=admin["password"],
                                inbox_prefix=admin["inbox_prefix"])
        try:
            js = nc.jetstream(timeout=2)
            bucket = base.name
            deadline = time.monotonic() + 40
            while True:  # until a meta leader is elected and all three peers are known
                try:
                    kv = await js.create_key_value(bucket=bucket, replicas=3)
                    break
                except Exception:
                    assert time.monotonic() < deadline, (base / "n1.log").read_text()[-2000:]
                    await asyncio.sleep(0.25)
            await kv.put("k", b"v")
            assert (await kv.get("k")).value == b"v"
            info = await js.stream_info(f"KV_{bucket}")
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
            await js.delete_key_value(bucket)
        finally:
            await nc.close()
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_systemd_units_name_real_programs():
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    programs = set()
    for path in units:
        unit = configparser.ConfigParser(interpolation=None)
        unit.optionxform = str  # systemd keys are case-sensitive
        unit.read(path)
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), path.name
        exec_start = unit["Service"]["ExecStart"].split()
        program = Path(exec_start[0])
        assert program.parent == Path("/opt/corral/.venv/bin"), path.name
        programs.add(program.name)
        if program.name == "nats-server":
            # Started through the link beside the generated auth.conf (shared/auth.py).
            conf = Path(exec_start[exec_start.index("-c") + 1])
            assert conf.parent == Path("/var/lib/corral/nats"), path.name
            pre = unit["Service"]["ExecStartPre"].split()
            assert pre[1:4] == ["-m", "shared.auth", "--dir"] and "init" in pre, path.name
            assert (ROOT / Path(pre[pre.index("--link") + 1]).relative_to("/opt/corral")
                    ).is_file() and Path(pre[pre.index("--link") + 1]).name == conf.name
            continue
        assert program.name in SCRIPTS and path.stem == program.name, path.name
        assert "corral-nats.service" in unit["Unit"]["Requires"].split()
        assert "corral-nats.service" in unit["Unit"]["After"].split()
        assert "CORRAL_DIR=/var/lib/corral" in unit["Service"]["Environment"].split()
    assert programs >= {"nats-server", "corral-gateway", *(f"corral-{s}" for s in SERVICES)}


def test_compose_runs_every_service():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert set(compose) == {"nats", "gateway", *SERVICES}
    nats_cmd = " ".join(compose["nats"]["command"])  # the bus users first, then the server
    assert compose["nats"]["image"] == "corral:dev" and "-js" in nats_cmd.split()
    assert "shared.auth" in nats_cmd and "-c /var/lib/corral/nats/single.conf" in nats_cmd
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim-bookworm" in dockerfile and "pip install" in dockerfile
    for name in ["gateway", *SERVICES]:
        svc = compose[name]
        assert svc["command"] == [f"corral-{name}"] and f"corral-{name}" in SCRIPTS
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["environment"]["CORRAL_DIR"] == "/var/lib/corral"
        assert any(v["target"] == "/var/lib/corral" for v in svc["volumes"] if
                   isinstance(v, dict)), name
        host = name in HOST_SERVICES
        assert bool(svc.get("privileged")) == host, name
        assert (svc.get("network_mode") == "host") == host, name
        nats_host = "127.0.0.1" if host else "nats"
        assert svc["environment"]["CORRAL_NATS_URL"] == f"nats://{nats_host}:4222"


def test_make_targets_and_scripts():
    dry = subprocess.run(["make", "-n", "-C", ROOT, "test", "bench", "up", "down", "image",
                          "lint"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    test_line = next(line for line in dry.stdout.splitlines() if "pytest" in line)
    assert test_line.strip() == ".venv/bin/pytest -q"  # nothing may mask exit code 5
    for script in ["up.sh", "down.sh", "install.sh", "bootstrap.sh", "../.ci/run"]:
        path = DEPLOY / script
        assert os.access(path, os.X_OK), script
        assert "set -euo pipefail" in path.read_text(), script
        assert subprocess.run(["bash", "-n", path]).returncode == 0, script
