"""What a container's start does not do any more: run shadow's newuidmap/newgidmap
(liblxc writes the id map itself: four execs fewer inside every ``lxc-start``), rewrite
its unchanged definition."""

from __future__ import annotations

import json
import os
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


def test_a_start_rewrites_nothing_unchanged(world, stack):
    """A start with nothing changed leaves the LXC config and the spec as they are (on
    ext4 each rename over a file flushes it), and writes no disk listing when there is
    no extra disk."""
    name = world.name("same")
    lxc(stack, "launch", world.image, name, "-p", world.profile)
    d = world.lxc_dir(name)
    assert not (d / "disks.json").exists()
    # The first start after the launch's stores the record's volatile keys in the spec
    lxc(stack, "restart", "--force", name)
    lxc(stack, "stop", "--force", name)
    before = {f: os.stat(d / f).st_ino for f in ("config", "corral.json")}
    lxc(stack, "start", name)
    assert world.live(name)["status"] == "Running"
    assert {f: os.stat(d / f).st_ino for f in before} == before
    lxc(stack, "stop", "--force", name)
    lxc(stack, "config", "set", name, "raw.lxc", "lxc.log.level = info")  # a change
    lxc(stack, "start", name)
    assert world.live(name)["status"] == "Running"
    assert all(os.stat(d / f).st_ino != ino for f, ino in before.items())
    assert "lxc.log.level = info" in (d / "config").read_text()
    lxc(stack, "delete", "--force", name)
