"""A disk hot-plug interrupted by a crash of the instance service (killed at the fault
point ``hotplug:after_attach``, after the mount, before the record): at its next start the
running container's disks are put back to what its record says (the journal entry in the
driver's spec says a change was under way), so nothing mounted is left unrecorded.
On the fault tests' private stack (it kills a service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .stack import private_stack
from .test_faults import fapi, restart, start_again, wait_dead  # noqa: F401
from .test_faults import world as fworld  # noqa: F401

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def fstack(request):
    """The fault tests' private stack, its gateway giving up on a live change in 15 s
    (CORRAL_LIVE_CHANGE_TIMEOUT) instead of 60: the PATCH the crash cuts waits that out,
    and the change that follows takes a second or two."""
    with private_stack(request, "faults", CORRAL_LIVE_CHANGE_TIMEOUT="15") as s:
        yield s


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
