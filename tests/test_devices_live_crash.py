"""A device hot-plug interrupted by a crash of the instance service (killed at the fault
point ``hotplug:after_devices``: a NIC, a unix-char node and a proxy forwarder made in the
running container, the record not stored): at its next start the container is put back
to what its record says (the journal in its directory says a change was under way), so
no veth, node or forwarder is left unrecorded, and the same change then goes in once.
A disk hot-plug killed at ``hotplug:after_attach`` (after the mount, before the record):
at the next start nothing mounted is left unrecorded (the journal entry in the driver's
spec says a change was under way).
On one private stack like the fault tests' (it kills a service)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from .stack import private_stack
from .test_faults import (  # noqa: F401
    fapi,
    restart,
    start_again,
    wait_dead,
    wait_final,
)
from .test_faults import world as fworld  # noqa: F401
from .world import lxc

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def fstack(request):
    """The fault tests' private stack, its gateway giving up on a live change in 8 s
    (CORRAL_LIVE_CHANGE_TIMEOUT) instead of 60: the PATCH the crash cuts waits that out,
    and the change that follows takes a second or two."""
    with private_stack(request, "faults", CORRAL_LIVE_CHANGE_TIMEOUT="8") as s:
        yield s


def _ports(bridge: str) -> set[str]:
    """The interfaces on the world's bridge (only this module's containers use it)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=bridge)[0]
        return {lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()
                if lk.get_attr("IFLA_MASTER") == idx}


def _sh(stack, name: str, script: str, check: bool = True):
    return lxc(stack, "exec", name, "--", "sh", "-c", script, check=check)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_interrupted_device_hotplug_is_undone_at_the_next_start(  # noqa: F811
        fstack, fapi, fworld):  # noqa: F811
    name = fworld.create("dhp", start=True)
    port = _port()
    devices = {
        "eth1": {"type": "nic", "network": fworld.net, "name": "eth1"},
        "z": {"type": "unix-char", "path": "/dev/myzero", "major": "1", "minor": "5"},
        "p": {"type": "proxy", "listen": f"tcp:127.0.0.1:{port}",
              "connect": "tcp:127.0.0.1:80"}}
    veths = _ports(fworld.net)
    restart(fstack, "instance", fault="hotplug:after_devices")
    r = fapi.patch(f"/1.0/instances/{name}", json={"devices": devices}, timeout=90)
    if r.status_code == 202:  # an update as an operation: it fails with its process
        assert wait_final(fapi, r.json()["operation"])["status"] == "Failure"
    else:
        assert r.status_code >= 500, r.text
    wait_dead(fstack, "instance")
    run_dir = fworld.lxc_dir(name)
    assert (run_dir / "hotplug.json").exists()  # the crash left the journal...
    assert _ports(fworld.net) != veths and _listening(port)  # ...and the devices it names
    start_again(fstack, "instance")
    rec = fworld.get(name)
    assert not set(devices) & set(rec["devices"])
    assert not [k for k in rec["config"] if k.startswith("volatile.eth1.")]
    assert _ports(fworld.net) == veths
    assert _sh(fstack, name, "ip link show eth1", check=False).returncode != 0
    assert _sh(fstack, name, "test -e /dev/myzero", check=False).returncode != 0
    assert not _listening(port)
    assert not (run_dir / "hotplug.json").exists()
    assert not list((run_dir / "proxy").glob("*.json"))
    # The same change goes in, once.
    r = fapi.patch(f"/1.0/instances/{name}", json={"devices": devices})
    if r.status_code == 202:
        fworld.wait(r)
    else:
        assert r.status_code == 200, r.text
    assert _sh(fstack, name, "ip -o link show eth1").returncode == 0
    assert _sh(fstack, name, "test -c /dev/myzero").returncode == 0
    assert _listening(port)
    assert json.loads((run_dir / "proxy" / "p.json").read_text())["pid"] > 0
    fworld.remove(name)
    assert not _ports(fworld.net) and not _listening(port)


def _mounted(world, name: str, path: str) -> bool:
    pid = world.live(name)["pid"]
    return any(line.split()[1] == path
               for line in Path(f"/proc/{pid}/mounts").read_text().splitlines())


def test_interrupted_hotplug_is_undone_at_the_next_start(fstack, fapi, fworld,  # noqa: F811
                                                         tmp_path):
    name = fworld.create("hp", start=True)
    src = tmp_path / "src"
    src.mkdir()
    for d in (tmp_path, src):
        d.chmod(0o755)
    dev = {"type": "disk", "source": str(src), "path": "/mnt/crash"}
    restart(fstack, "instance", fault="hotplug:after_attach")
    r = fapi.patch(f"/1.0/instances/{name}", json={"devices": {"x": dev}}, timeout=90)
    assert r.status_code >= 500, r.text
    wait_dead(fstack, "instance")
    start_again(fstack, "instance")
    assert "x" not in fworld.get(name)["devices"]
    assert not _mounted(fworld, name, "/mnt/crash")
    # The name and the path are free: the same device goes in, once.
    r = fapi.patch(f"/1.0/instances/{name}", json={"devices": {"x": dev}})
    if r.status_code == 202:
        fworld.wait(r)
    else:
        assert r.status_code == 200, r.text
    pid = fworld.live(name)["pid"]
    mounts = Path(f"/proc/{pid}/mounts").read_text().splitlines()
    assert sum(1 for line in mounts if line.split()[1] == "/mnt/crash") == 1
