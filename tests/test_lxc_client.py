"""The stock LXD client (Debian's ``lxc`` 5.0) against Corral's instance API."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from .stack import wait_for
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


def test_stock_client_lifecycle(world, stack, api):
    name = world.name("lxc")
    lxc(stack, "launch", world.image, name, "-p", world.profile)
    rows = json.loads(lxc(stack, "list", "--format", "json").stdout)
    assert any(r["name"] == name and r["status"] == "Running" for r in rows)
    out = lxc(stack, "list", name, "--format", "csv", "-c", "ns").stdout
    assert out.strip() == f"{name},RUNNING"
    info = lxc(stack, "info", name).stdout
    assert f"Name: {name}" in info and "RUNNING" in info
    lxc(stack, "config", "set", name, "limits.memory", "64MiB")
    assert lxc(stack, "config", "get", name, "limits.memory").stdout.strip() == "64MiB"
    pid = world.live(name)["pid"]
    cg = [ln.split(":")[2] for ln in open(f"/proc/{pid}/cgroup").read().splitlines()
          if ln.split(":")[1] == "memory"][0]
    limit = open(f"/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes").read().strip()
    assert int(limit) == 64 * 2**20
    lxc(stack, "stop", name, "--force")
    assert world.live(name)["status"] == "Stopped"
    lxc(stack, "start", name)
    lxc(stack, "restart", name, "--force")
    assert world.live(name)["status"] == "Running"
    r = lxc(stack, "start", name, check=False)
    assert r.returncode != 0 and "already running" in r.stderr
    lxc(stack, "operation", "list")
    shown = lxc(stack, "profile", "show", world.profile).stdout
    assert f"/1.0/instances/{name}" in shown
    lxc(stack, "delete", "--force", name)
    wait_for(lambda: api.get(f"/1.0/instances/{name}").status_code == 404, 20)
    assert not world.lxc_dir(name).exists() and not world.volume(name).exists()


def test_launch_without_a_name(world, stack, api):
    """``lxc launch <image>`` (no name): LXD picks a free adjective-noun name, so must we."""
    r = lxc(stack, "launch", world.image, "-p", world.profile)
    m = re.search(r"(?:Instance name is: |Starting )(\S+)", r.stdout)
    assert m, r.stdout
    name = m.group(1)
    try:
        assert re.fullmatch(r"[a-z]+-[a-z]+", name), name
        assert world.live(name)["status"] == "Running"
        lxc(stack, "delete", "--force", name)
        assert api.get(f"/1.0/instances/{name}").status_code == 404
    finally:  # not under the world's prefix: its teardown would not see it
        world.remove(name)


def test_device_unset_removes_the_key(world, stack, api):
    """`lxc config device unset` sends the key with an empty value: the key goes, as in LXD,
    on an instance's own device and on a profile's."""
    name = world.create("unset")
    lxc(stack, "config", "device", "add", name, "extra", "none")
    lxc(stack, "config", "device", "set", name, "extra", "user.note", "x")
    lxc(stack, "config", "device", "unset", name, "extra", "user.note")
    assert api.get(f"/1.0/instances/{name}").json()["metadata"]["devices"]["extra"] == \
        {"type": "none"}
    lxc(stack, "profile", "device", "set", world.profile, "root", "size", "1GiB")
    lxc(stack, "profile", "device", "unset", world.profile, "root", "size")
    root = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"]["root"]
    assert "size" not in root, root


def test_unset_removes_keys_of_profiles_pools_and_instances(world, stack, api):
    """`lxc profile unset` and `lxc storage unset` send the key with "": it goes."""
    lxc(stack, "profile", "set", world.profile, "user.note", "x")
    lxc(stack, "profile", "unset", world.profile, "user.note")
    assert "user.note" not in api.get(f"/1.0/profiles/{world.profile}").json()["metadata"][
        "config"]
    lxc(stack, "storage", "set", world.pool, "user.note", "y")
    assert api.get(f"/1.0/storage-pools/{world.pool}").json()["metadata"]["config"][
        "user.note"] == "y"
    lxc(stack, "storage", "unset", world.pool, "user.note")
    assert "user.note" not in api.get(f"/1.0/storage-pools/{world.pool}").json()[
        "metadata"]["config"]
    name = world.create("unsetcfg")
    lxc(stack, "config", "set", name, "user.a", "1")
    world.wait(api.patch(f"/1.0/instances/{name}", json={"config": {"user.a": ""}}))
    assert "user.a" not in api.get(f"/1.0/instances/{name}").json()["metadata"]["config"]
