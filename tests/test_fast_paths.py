"""Issue 12's paths: what a service loads, and what a request does at once.

Each service maps only the native libraries it uses (the memory goal): every Corral
process pays its imports in private memory, and `make bench` sums them;
libvirt (~11 MiB in the instance service) and aiohttp (~8 MiB in the hooks and the image
service) were loaded at start by every stack, also where no VM, no webhook and no pull
from LXD ever happens. They are now loaded at first use. The tests read ``/proc/PID/maps``
of a private stack's processes, so they see what a process really holds, and check that
a first use still loads them.

A delete asks the storage service to remove the root volume and the network service to
release the DHCP leases at once (they are independent): the spans every process writes
(``CORRAL_TRACE_FILE``) show the two bus requests in flight together. Not a timing test:
one request is sent before the other's answer, whatever the machine's speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.stack import Stack, private_stack, socket_client, wait_for
from tests.world import make_world, wait_op


def maps(stack: Stack, service: str) -> str:
    return Path(f"/proc/{stack.procs[service].pid}/maps").read_text()


@pytest.fixture(scope="module")
def lean_stack(request, tmp_path_factory):
    # CORRAL_VM=0: VMs are off, as on a host without libvirtd (another test's libvirtd,
    # if one runs, must not decide what the instance service loads)
    trace_file = tmp_path_factory.mktemp("traces") / "spans.jsonl"
    with private_stack(request, "fastpaths", CORRAL_VM="0",
                       CORRAL_TRACE_FILE=str(trace_file)) as s:
        s.trace_file = trace_file  # type: ignore[attr-defined]
        yield s


def spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_instance_service_does_not_load_libvirt_without_vms(lean_stack):
    with socket_client(lean_stack) as api:
        r = api.get("/1.0")  # the server's environment asks the drivers
        assert r.status_code == 200, r.text
        assert "qemu" not in r.json()["metadata"]["environment"]["driver"]
        r = api.get("/1.0/instances?recursion=2")
        assert r.status_code == 200, r.text
    assert "libvirtmod" not in maps(lean_stack, "instance")
    assert "liblxc" in maps(lean_stack, "instance")  # the check can see a library


def test_image_service_does_not_load_aiohttp_before_an_lxd_pull(lean_stack):
    """aiohttp serves only pulls from an LXD server there (test_image_pull does those)."""
    with socket_client(lean_stack) as api:
        assert api.get("/1.0/images?recursion=1").status_code == 200
    assert "aiohttp" not in maps(lean_stack, "image")


def test_hooks_service_loads_aiohttp_at_its_first_webhook(lean_stack):
    assert "aiohttp" not in maps(lean_stack, "hooks")
    with socket_client(lean_stack) as api:
        r = api.post("/1.0/hooks", json={
            "name": "fp1", "type": "lifecycle", "action": "profile-created",
            "webhook": {"url": "http://127.0.0.1:9/none", "timeout": 1}})
        assert r.status_code == 200, r.text
        try:
            r = api.post("/1.0/profiles", json={"name": "fpprofile"})
            assert r.status_code == 200, r.text
            wait_for(lambda: "aiohttp" in maps(lean_stack, "hooks"), 20,
                     what="the hooks service to deliver its first webhook")
        finally:
            api.delete("/1.0/profiles/fpprofile")
            api.delete("/1.0/hooks/fp1")


def test_migration_service_does_not_load_aiohttp_before_it_dials_a_peer(lean_stack):
    """aiohttp is its websocket client to another server (test_migration_remote dials)."""
    with socket_client(lean_stack) as api:
        assert api.get("/1.0/instances?recursion=1").status_code == 200
    assert "aiohttp" not in maps(lean_stack, "migration")
    assert "aiohttp" in maps(lean_stack, "gateway")  # the check can see aiohttp


@pytest.mark.parametrize("service, module, use", [
    ("image", "httpx", "import shared.image.download as d; d.client()"),
    ("instance", "croniter", "from services.instance import snapshot_schedule as s; "
                             "s.check_config({'snapshots.schedule': '0 1 * * *'})"),
])
def test_pure_python_libraries_are_imported_at_first_use(service, module, use):
    """httpx (downloads) and croniter (cron snapshot schedules) are pure Python, so
    nothing shows in maps: the service's modules are imported in a process of their own."""
    code = (f"import sys; from shared import lean; lean.prepare(); "
            f"import services.{service}.main; print({module!r} in sys.modules); {use}; "
            f"print({module!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.split() == ["False", "True"], out


def test_network_service_uses_pyroute2_without_its_whole_package(lean_stack):
    """pyroute2's __init__ would import NDB (and sqlite3, a native library) and IPDB:
    shared/lean.py leaves them out while the service makes and lists bridges."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("needs dnsmasq (managed bridges)")
    name = "fp" + uuid.uuid4().hex[:6]
    with socket_client(lean_stack) as api:
        r = api.post("/1.0/networks", json={"name": name, "type": "bridge", "config": {
            "ipv4.address": "auto", "ipv6.address": "none"}})
        assert r.status_code in (200, 201), r.text
        try:
            r = api.get("/1.0/networks?recursion=1")  # the host's interfaces too
            assert r.status_code == 200, r.text
            assert {n["name"] for n in r.json()["metadata"]} >= {name, "lo"}
            assert Path(f"/sys/class/net/{name}").exists()
        finally:
            assert api.delete(f"/1.0/networks/{name}").status_code == 200
    network = maps(lean_stack, "network")
    assert "_sqlite3" not in network and "libsqlite3" not in network
    assert "_ctypes" in network  # the check can see a native module


def test_lean_pyroute2_still_gives_the_whole_package_when_asked():
    code = ("import sys; from shared import lean; lean.prepare(); "
            "from pyroute2 import IPRoute; from pyroute2.netlink.exceptions import "
            "NetlinkError; a = 'pyroute2.ndb.main' in sys.modules; import pyroute2; "
            "from pyroute2 import NDB, IPRoute as I2; "
            "print(a, 'pyroute2.ndb.main' in sys.modules, I2 is IPRoute, "
            "pyroute2.NetlinkError is NetlinkError, bool(pyroute2.__version__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.split() == ["False", "True", "True", "True", "True"], out


def test_a_delete_removes_the_volume_and_releases_the_lease_at_once(lean_stack,
                                                                    busybox_tarball):
    if shutil.which("dnsmasq") is None:
        pytest.skip("needs dnsmasq (managed bridges)")
    with socket_client(lean_stack) as api, \
            make_world(api, lean_stack, busybox_tarball, network=True,
                       pool_driver="dir") as w:
        name = w.name("dl")
        wait_op(api, api.post("/1.0/instances", json={
            "name": name, "source": {"type": "image", "alias": w.image},
            "profiles": [w.profile]}))
        trace_id = uuid.uuid4().hex
        r = api.delete(f"/1.0/instances/{name}", headers={
            "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
        wait_op(api, r)
        assert api.get(f"/1.0/instances/{name}").status_code == 404

        def asked() -> dict[str, dict]:
            out = {}
            for s in spans(lean_stack.trace_file):
                if s["trace_id"] == trace_id and s["kind"] == "CLIENT":
                    for verb in ("volume_delete", "nic_release"):
                        if s["name"].endswith("." + verb):
                            out[verb] = s
            return out

        wait_for(lambda: len(asked()) == 2, 20, what="both bus requests' spans")
        vol, lease = asked()["volume_delete"], asked()["nic_release"]
        # in flight together: each was sent before the other's answer came back
        assert vol["start"] < lease["end"] and lease["start"] < vol["end"], (vol, lease)
