"""Real parts for tests: a nats-server and Corral processes, each started and ended by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
SERVICES = ("image", "instance", "storage", "network", "migration")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or predicate}")


def stop_pid(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class NatsServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "nats-server"), "-js", "-sd", str(self.workdir / "jetstream"),
             "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._listening, 15, what="nats-server")

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
            return s.recv(4).startswith(b"INFO")

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc)
            self.proc = None


class Stack:
    """Five services and the gateway as separate processes, like `make up` runs them."""

    def __init__(self, corral_dir: Path, nats: NatsServer, **env: str) -> None:
        self.dir = corral_dir
        self.nats = nats
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "CORRAL_DIR": str(corral_dir), "CORRAL_NATS_URL": nats.url,
                    "CORRAL_LOG_LEVEL": "debug", "CORRAL_REQUEST_TIMEOUT": "2", **env}
        (corral_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def socket(self) -> Path:
        return self.dir / "unix.socket"

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def start(self, name: str) -> None:
        log = open(self.log_path(name), "ab")
        self.procs[name] = subprocess.Popen([str(BIN / f"corral-{name}")], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc:
            stop_pid(proc)

    def start_all(self) -> None:
        for name in (*SERVICES, "gateway"):
            self.start(name)
        wait_for(self.ready, 60, what="the gateway to answer GET /1.0")

    def ready(self) -> bool:
        """Every service answers (each list path is a different service)."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))) as c:
            return all(c.get(f"http://corral{path}").status_code == 200
                       for path in ("/1.0/instances", "/1.0/images", "/1.0/storage-pools",
                                    "/1.0/networks"))

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
