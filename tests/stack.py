"""Real parts for tests: a nats-server and Corral processes, each started and ended by PID."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from shared import auth

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
# nats-server's soft memory limit (Go runtime): see deploy/up.sh.
NATS_GOMEMLIMIT = "128MiB"  # as deploy/up.sh
NATS_GOGC = "50"
SERVICES = ("image", "instance", "storage", "network", "migration", "hooks")


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


def stop_pid(proc: "subprocess.Popen | Forked", timeout: float = 10.0) -> None:
    stop_pids([proc], timeout)


def stop_pids(procs: list[subprocess.Popen | Forked], timeout: float = 10.0) -> None:
    """SIGTERM to each, then wait for all (SIGKILL to what is left after ``timeout``):
    several stop together, not in turn (a service stops in tens of ms since it leaves
    without the interpreter's finalization, shared/service.py ``run_process``)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class NatsServer:
    """nats-server with Corral's authorization, generated the way `make up` does it.

    The users and credentials live in ``corral_dir`` (default ``workdir``), as in
    ``$CORRAL_DIR``: ``nats/auth.conf``, ``credentials/<name>.json``, and the server's PID in
    ``run/nats.pid`` so ``corral bus credentials`` can make it reload.
    """

    def __init__(self, workdir: Path, corral_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.corral_dir = corral_dir or workdir
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.paths = auth.Paths(self.corral_dir)

    def credentials(self, name: str) -> Path:
        return self.paths.credentials(name)

    @property
    def admin(self) -> Path:
        """Root's credential: everything but the exec/console byte streams."""
        return self.credentials(auth.ADMIN)

    def connect_options(self, name: str = auth.ADMIN) -> dict[str, str]:
        """``nats.connect`` keyword arguments for the user ``name``."""
        data = json.loads(self.credentials(name).read_text())
        return {"user": data["user"], "password": data["password"],
                "inbox_prefix": data["inbox_prefix"]}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        auth.init(self.corral_dir)
        conf = auth.link_config(self.corral_dir, ROOT / "deploy" / "nats" / "single.conf")
        log = open(self.workdir / "nats-server.log", "ab")
        env = {**os.environ, "CORRAL_NATS_PORT": str(self.port),
               "CORRAL_NATS_STORE_DIR": str(self.workdir / "jetstream"),
               # as deploy/up.sh: Go's GC keeps the heap near this instead of doubling it
               "GOMEMLIMIT": os.environ.get("CORRAL_NATS_GOMEMLIMIT", NATS_GOMEMLIMIT),
               "GOGC": os.environ.get("CORRAL_NATS_GOGC", NATS_GOGC)}
        self.proc = subprocess.Popen([str(BIN / "nats-server"), "-c", str(conf)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.paths.pid_file.write_text(f"{self.proc.pid}\n")
        wait_for(self._listening, 15, what="nats-server")

    def violations(self) -> list[str]:
        """What the server refused: "<user>: Publish Violation - Subject ..." per line.

        A service's user refused a subject it needs means a gap in shared/auth.py's tables
        (tests/test_bus_auth.py provokes some on purpose).
        """
        try:
            text = (self.workdir / "nats-server.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = re.findall(r'"\$G/user:([^"]+)" - ((?:Publish|Subscription) Violation .*)', text)
        return sorted({f"{user}: {what}" for user, what in found})

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
            return s.recv(4).startswith(b"INFO")

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc)
            self.proc = None
            self.paths.pid_file.unlink(missing_ok=True)


class Forked:
    """A service a fork server started (shared/forkserver.py): the part of ``Popen`` that
    Stack, ``stop_pids`` and the benches use. It is not our child (forked twice, as
    `make up` does it), so its exit status is unknown: ``returncode`` is 0 once it is gone.
    A pidfd follows it, so a recycled PID is never signalled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.fd], [], [], 0)[0]:
            self.returncode = 0
            os.close(self.fd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not select.select([self.fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return self.poll() or 0

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self.fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Stack:
    """Five services and the gateway as separate processes, like `make up` runs them.

    With ``forkserver`` (the benches: `make up`'s way, not the tests': a test's service
    must be its own program, as it runs in a fault test or a `kill -9`), a fork server is
    started first and the services are forked from it (shared/forkserver.py); a service
    it cannot start is started standalone.
    """

    def __init__(self, corral_dir: Path, nats: NatsServer, forkserver: bool = False,
                 **env: str) -> None:
        self.dir = corral_dir
        self.nats = nats
        self.procs: dict[str, subprocess.Popen | Forked] = {}
        self.forkserver: subprocess.Popen | None = None
        self.use_forkserver = forkserver
        self.env = {**os.environ, "CORRAL_DIR": str(corral_dir), "CORRAL_NATS_URL": nats.url,
                    "CORRAL_LOG_LEVEL": "debug", "CORRAL_REQUEST_TIMEOUT": "2",
                    # an exec whose client never connects fails in 10 s, not 30: the tests
                    # of it wait less (a client that does connect takes milliseconds)
                    "CORRAL_WS_TIMEOUT": "10",
                    # the gateway stops in ~2 s even with a client's websocket open (not 10 s)
                    "CORRAL_SHUTDOWN_TIMEOUT": "1",
                    # custom volumes' scheduled and expired snapshots every second, not 10 s:
                    # a test of them waits for the pass, not for the period
                    "CORRAL_SNAPSHOT_PRUNE_INTERVAL": "1", **env}
        (corral_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def socket(self) -> Path:
        return self.dir / "unix.socket"

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    @property
    def forkserver_socket(self) -> Path:
        return self.dir / "run" / "forkserver.sock"

    def start_forkserver(self, timeout: float = 60) -> None:
        """The fork server of this stack, from this checkout (cwd: ``-m`` finds ``shared``
        here), ready when its socket answers."""
        self.forkserver_socket.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path("forkserver"), "ab")
        self.forkserver = subprocess.Popen(
            [sys.executable, "-m", "shared.forkserver", "serve", "--socket",
             str(self.forkserver_socket)], env=self.env, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.forkserver_socket.exists(), timeout, what="the fork server")

    def start(self, name: str) -> None:
        log = open(self.log_path(name), "ab")
        # Each process connects as its own bus user, whatever directory the server's are in.
        env = {**self.env, "CORRAL_NATS_CREDENTIALS": str(self.nats.credentials(name))}
        if self.forkserver is not None and self.forkserver.poll() is None and name != "all":
            from shared import forkserver
            try:
                self.procs[name] = Forked(forkserver.spawn(
                    self.forkserver_socket, name, self.log_path(name),
                    str(BIN / f"corral-{name}"), env=env, cwd=str(ROOT)))
                return
            except (OSError, forkserver.Refused) as e:
                log.write(f"fork server: {e}; started standalone\n".encode())
                log.flush()
        self.procs[name] = subprocess.Popen([str(BIN / f"corral-{name}")], env=env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc:
            stop_pid(proc)

    def start_all(self, timeout: float = 60) -> None:
        if self.use_forkserver and self.forkserver is None:
            self.start_forkserver(timeout)
        for name in (*SERVICES, "gateway"):
            self.start(name)
        wait_for(self.ready, timeout, what="the gateway to answer GET /1.0")

    def ready(self) -> bool:
        """Every service answers (each list path is a different service)."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))) as c:
            return all(c.get(f"http://corral{path}").status_code == 200
                       for path in ("/1.0/instances", "/1.0/images", "/1.0/storage-pools",
                                    "/1.0/networks"))

    def stop_all(self) -> None:
        """The services together, then the gateway (0.3 s a stack; ~3 s before
        ``run_process``)."""
        services = [n for n in self.procs if n != "gateway"]
        stop_pids([self.procs.pop(n) for n in services])
        for name in list(self.procs):
            self.stop(name)
        if self.forkserver is not None:
            stop_pid(self.forkserver)
            self.forkserver = None


@contextlib.contextmanager
def private_stack(request, name: str, ready_timeout: float = 180, **env: str
                  ) -> Iterator[Stack]:
    """A separate Corral for one test module: its own nats-server (users and credentials
    in its own CORRAL_DIR, as `make up` does) and state dir under a ``corral-<name>-``
    temp dir, ended by PID and removed at the end, also on failure. ``env`` goes to its
    processes (e.g. a short task interval). Started beside the session's stack, which may
    be busy: it gets ``ready_timeout`` seconds to answer. When the session has failures,
    the services' logs are kept and their place printed."""
    tmp = tempfile.TemporaryDirectory(prefix=f"corral-{name}-")
    base = Path(tmp.name)
    server = NatsServer(base / "nats", base / "corral")
    server.start()
    s = Stack(base / "corral", server, **env)
    try:
        s.start_all(ready_timeout)
        yield s
    finally:
        s.stop_all()
        server.stop()
        if request.session.testsfailed:
            keep = Path(tempfile.mkdtemp(prefix=f"corral-{name}-logs-"))
            shutil.copytree(base / "corral" / "logs", keep, dirs_exist_ok=True)
            print(f"\ncorral: the {name} stack's service logs kept in {keep}")
        tmp.cleanup()


@contextlib.contextmanager
def socket_client(stack: Stack, timeout: float = 30) -> Iterator[httpx.Client]:
    """An HTTP client of ``stack``'s API on its unix socket."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.socket)),
                      base_url="http://corral", timeout=timeout) as client:
        yield client
