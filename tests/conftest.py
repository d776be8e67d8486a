"""Session fixtures: one real nats-server and one Corral stack per test session.

Everything lives in a temporary CORRAL_DIR and on a free port, so the suite runs beside a
`make up` stack and twice in a row.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from shared.bus import Bus
from shared.config import load_config

from .stack import NatsServer, Stack


@pytest.fixture(scope="session")
def session_dir(request):
    with tempfile.TemporaryDirectory(prefix="corral-test-") as d:
        yield Path(d)
        if request.session.testsfailed:  # keep the services' logs to read after a failure
            keep = Path(tempfile.mkdtemp(prefix="corral-test-logs-"))
            for log in Path(d).glob("*/logs"):
                shutil.copytree(log, keep / log.parent.name, dirs_exist_ok=True)
            print(f"\ncorral: services' logs of this failed session kept in {keep}")


@pytest.fixture(scope="session")
def nats_server(session_dir):
    # Its users and credentials in the stack's CORRAL_DIR, where `make up` puts them.
    server = NatsServer(session_dir / "nats", session_dir / "corral")
    server.start()
    yield server
    server.stop()
    if refused := server.violations():  # a gap in shared/auth.py shows up as a timeout
        print("\ncorral: nats-server refused these subjects (test_bus_auth provokes some):\n  "
              + "\n  ".join(refused))


@pytest.fixture(scope="session")
def stack(session_dir, nats_server):
    s = Stack(session_dir / "corral", nats_server)
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="session")
def api(stack):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.socket)),
                      base_url="http://corral", timeout=30) as client:
        yield client


@pytest.fixture
async def aapi(stack):
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(stack.socket)),
                                 base_url="http://corral", timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def bus_config(stack, nats_server):
    # Tests talk to the services' subjects and buckets directly: root's admin credential.
    return load_config(dir=stack.dir, nats_url=nats_server.url, request_timeout=2.0,
                       nats_credentials=nats_server.admin)


@pytest.fixture(scope="session")
async def bus(bus_config):
    b = Bus(bus_config, "tests")
    await b.connect()
    yield b
    await b.close()


@pytest.fixture(scope="session")
def shared_two_nodes():
    """The two-node cluster the two-node modules share (tests/cluster_stack.SharedNodes):
    normally stopped by the last of them; whatever is left at the session's end here."""
    from .cluster_stack import SharedNodes

    shared = SharedNodes()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="session")
def busybox_tarball(tmp_path_factory) -> Path:
    """The busybox image (unified tarball), built once per session for every world."""
    from shared.image.build import build_busybox

    return build_busybox(tmp_path_factory.mktemp("busybox"), alias_hint="busybox")


# The VM kernel (and its initramfs parts) downloaded once per machine, not per session.
VM_KERNEL_CACHE = Path("/var/cache/corral-test/vm-kernel")


@pytest.fixture(scope="session")
def busybox_vm_image(tmp_path_factory) -> tuple[Path, Path]:
    """The busybox VM image (metadata tarball, qcow2 disk), built once per session: every
    VM module uploads the same files (each build takes seconds)."""
    from shared.image.build_vm import build_busybox_vm

    return build_busybox_vm(tmp_path_factory.mktemp("vmimg"), cache_dir=VM_KERNEL_CACHE)


@pytest.fixture
def uid() -> str:
    """A unique, short name prefix for whatever a test creates."""
    return "t" + uuid.uuid4().hex[:7]


def pytest_configure(config):
    os.environ.setdefault("CORRAL_LOG_LEVEL", "debug")
