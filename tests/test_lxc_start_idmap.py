"""An unprivileged container's id map is written by liblxc itself at start, not by
shadow's newuidmap/newgidmap (four execs inside every ``lxc-start``), and is right."""

from __future__ import annotations

import json
import shutil

import pytest

from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


def test_start_writes_the_id_map_without_the_shadow_tools(world, stack):
    assert shutil.which("newuidmap") and shutil.which("newgidmap"), "the tools to avoid"
    name = world.name("idm")
    # LXC's trace log says who wrote the map: "newuidmap wrote mapping" or "Wrote mapping"
    lxc(stack, "launch", world.image, name, "-p", world.profile,
        "-c", "raw.lxc=lxc.log.level = trace")
    log = lxc(stack, "info", name, "--show-log").stdout
    assert "Wrote mapping" in log, log[-3000:]
    assert "newuidmap wrote" not in log and "newgidmap wrote" not in log
    current = json.loads(world.get(name)["config"]["volatile.idmap.current"])
    pid = world.live(name)["pid"]
    for kind, isuid in (("uid", True), ("gid", False)):
        want = [e for e in current if e["Isuid"] == isuid][0]
        rows = [ln.split() for ln in open(f"/proc/{pid}/{kind}_map").read().splitlines()]
        assert rows == [["0", str(want["Hostid"]), str(want["Maprange"])]]
    assert lxc(stack, "exec", name, "--", "id", "-u").stdout.strip() == "0"
    # a restart takes the same way
    lxc(stack, "restart", name, "--force")
    assert world.live(name)["status"] == "Running"
    lxc(stack, "delete", "--force", name)
