"""Validate before saving (issue 9): raw.lxc, other raw.* keys, profiles, and a stored
config LXC cannot load, through the HTTP API of a real stack with real containers.

Each case asserts the answer (400 naming what is wrong) *and* that nothing changed, and
that listing and reading other instances keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.other = w.create("other", start=True)  # type: ignore[attr-defined]
        yield w


def _etag_and_config(api, name: str) -> tuple[str, dict]:
    r = api.get(f"/1.0/instances/{name}")
    assert r.status_code == 200, r.text
    return r.headers.get("ETag", ""), r.json()["metadata"]["config"]


def _everything_still_answers(world, api) -> None:
    """The rows of issue 9: list, GET and file pull of every instance keep working."""
    for recursion in (0, 1, 2):
        r = api.get("/1.0/instances", params={"recursion": recursion})
        assert r.status_code == 200, r.text
    for url in api.get("/1.0/instances").json()["metadata"]:
        r = api.get(url)
        assert r.status_code == 200, r.text
    r = api.get(f"/1.0/instances/{world.other}/files", params={"path": "/etc/hostname"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw, words", [
    ("lxc.foo = bar", "LXC refuses lxc.foo"),                 # unknown to LXC: the row
    ("lxc.tty.max = many", "LXC refuses lxc.tty.max"),        # a value LXC cannot load
    ("lxc.hook.pre-start = /bin/true", "hooks run commands on the host"),
    ("lxc.rootfs.path = dir:/", "root file system is managed by Corral"),
    ("lxc.net.0.type = veth", "only interface-specific ipv4/ipv6"),
    ("lxc.log.file = /tmp/x", "log file is managed"),
    ("lxc.prlimit.nofile = 10", "process limits"),
    ("lxc.include = /etc/passwd", "includes"),
    ("just words", "expected 'key = value'"),
])
def test_bad_raw_lxc_is_a_400_and_changes_nothing(world, api, raw, words):
    name = world.create(f"raw{abs(hash(raw)) % 10000}")
    etag, before = _etag_and_config(api, name)
    config_file = world.lxc_dir(name) / "config"
    on_disk = config_file.read_text()
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"raw.lxc": raw}})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"], r.json()["error"]
    assert _etag_and_config(api, name) == (etag, before)
    assert config_file.read_text() == on_disk
    _everything_still_answers(world, api)
    world.remove(name)


def test_good_raw_lxc_is_applied(world, api):
    name = world.create("rawok")
    raw = "# a comment\n\tLXC.Environment = CORRAL_RAW=yes\n"
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"raw.lxc": raw}})
    assert r.status_code in (200, 202), r.text
    text = (world.lxc_dir(name) / "config").read_text()
    assert "lxc.environment = CORRAL_RAW=yes" in text
    world.state(name, "start")
    r = api.get(f"/1.0/instances/{name}/state")
    assert r.json()["metadata"]["status"] == "Running"
    world.remove(name)


def test_bad_raw_lxc_refused_at_create(world, api):
    name = world.name("rawcreate")
    r = api.post("/1.0/instances", json={
        "name": name, "source": {"type": "image", "alias": world.image},
        "profiles": [world.profile], "config": {"raw.lxc": "lxc.foo = bar"}})
    assert r.status_code == 400, r.text
    assert "lxc.foo" in r.json()["error"]
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    assert not world.lxc_dir(name).exists()


@pytest.mark.parametrize("key", ["raw.idmap", "raw.apparmor", "raw.seccomp"])
def test_other_raw_keys_refused_by_name(world, api, key):
    r = api.patch(f"/1.0/instances/{world.other}", json={"config": {key: "x"}})
    assert r.status_code == 400 and key in r.json()["error"], r.text
    assert key not in _etag_and_config(api, world.other)[1]


def test_a_config_lxc_cannot_load_breaks_only_its_own_instance(world, api):
    """A config left by an older version (written before these checks) that LXC refuses:
    its own instance reports Error and can be deleted; every other one still lists, reads
    and serves files."""
    name = world.create("broken")
    config_file = world.lxc_dir(name) / "config"
    config_file.write_text(config_file.read_text() + "lxc.foo = bar\n")
    _everything_still_answers(world, api)
    listed = {o["name"]: o for o in api.get("/1.0/instances",
                                            params={"recursion": 2}).json()["metadata"]}
    assert listed[name]["status"] in ("Error", "Stopped")  # not running: not asked
    assert listed[name]["state"]["status"] == "Error"
    assert api.get(f"/1.0/instances/{name}").json()["metadata"]["status"] == "Error"
    assert listed[world.other]["status"] == "Running"
    r = api.get(f"/1.0/instances/{name}/files", params={"path": "/etc/hostname"})
    assert r.status_code == 500 and "cannot load the configuration" in r.json()["error"]
    world.remove(name)
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    assert not world.lxc_dir(name).exists()


def test_profile_disk_devices_are_checked_like_an_instance_s(world, api, tmp_path):
    """A host-path disk in a profile is a real device now (applied to the profile's
    instances); a bad one is a 400 naming the device, at create and at update, and the
    profile is left as it was."""
    good = {"name": f"{world.prefix}-hp", "devices": {
        "data": {"type": "disk", "source": str(tmp_path), "path": "/mnt/data"}}}
    r = api.post("/1.0/profiles", json=good)
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/profiles/{good['name']}").json()["metadata"]["devices"] == \
        good["devices"]
    assert api.delete(f"/1.0/profiles/{good['name']}").status_code == 200

    bad = {"data": {"type": "disk", "source": str(tmp_path), "path": "mnt/data"}}
    r = api.post("/1.0/profiles", json={"name": f"{world.prefix}-hp2", "devices": bad})
    assert r.status_code == 400 and "data" in r.json()["error"], r.text
    assert api.get(f"/1.0/profiles/{world.prefix}-hp2").status_code == 404

    before = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]
    r = api.patch(f"/1.0/profiles/{world.profile}", json={"devices": bad})
    assert r.status_code == 400 and "data" in r.json()["error"], r.text
    assert api.get(f"/1.0/profiles/{world.profile}").json()["metadata"] == before


def test_profile_raw_lxc_and_config_checked_like_an_instance(world, api):
    before = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]
    for config, words in [({"raw.lxc": "lxc.foo = bar"}, "lxc.foo"),
                          ({"raw.lxc": "lxc.hook.start = /bin/sh"}, "hooks"),
                          ({"limits.memory": "lots"}, "limits.memory"),
                          ({"no.such.key": "1"}, "no.such.key")]:
        r = api.patch(f"/1.0/profiles/{world.profile}", json={"config": config})
        assert r.status_code == 400 and words in r.json()["error"], (config, r.text)
        r = api.post("/1.0/profiles", json={"name": f"{world.prefix}-bad", "config": config})
        assert r.status_code == 400 and words in r.json()["error"], (config, r.text)
    assert api.get(f"/1.0/profiles/{world.profile}").json()["metadata"] == before
    assert api.get(f"/1.0/profiles/{world.prefix}-bad").status_code == 404


def test_profile_change_an_instance_cannot_take_is_refused_before_saving(world, api):
    """Removing the root disk from the profile would leave its instances without one: the
    change is tried on them first and refused naming the instance."""
    before = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]
    r = api.put(f"/1.0/profiles/{world.profile}", json={"config": {}, "devices": {},
                                                       "description": ""})
    assert r.status_code == 400, r.text
    assert world.other in r.json()["error"] and "root device" in r.json()["error"]
    assert api.get(f"/1.0/profiles/{world.profile}").json()["metadata"] == before
