"""An instance's image metadata and templates through the stock client:
``lxc config metadata show/edit`` and ``lxc config template list/show/create/edit/delete``.

An edit changes what the instance's next start renders (a new template shows up in the
container), never the image; template names that could leave ``templates/`` are a 400.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .world import make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        yield w


def lxc(stack, *args: str, stdin: str | None = None, check: bool = True
        ) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_metadata_and_templates_change_what_the_next_start_renders(world, stack, api):
    name = world.name("meta")
    lxc(stack, "init", world.image, name, "-p", world.profile)
    meta = yaml.safe_load(lxc(stack, "config", "metadata", "show", name).stdout)
    assert meta["templates"]["/etc/hostname"]["template"] == "hostname.tpl"
    assert meta["creation_date"] > 0
    listed = lxc(stack, "config", "template", "list", name, "--format", "csv").stdout.split()
    assert {"hostname.tpl", "hosts.tpl"} <= set(listed)
    assert lxc(stack, "config", "template", "show", name, "hostname.tpl").stdout \
        == "{{ container.name }}\n"

    lxc(stack, "config", "template", "create", name, "motd.tpl")
    assert lxc(stack, "config", "template", "show", name, "motd.tpl").stdout == ""
    lxc(stack, "config", "template", "edit", name, "motd.tpl",
        stdin="hello from {{ container.name }}\n")
    meta["templates"]["/etc/motd"] = {"when": ["start"], "template": "motd.tpl"}
    meta["properties"]["description"] = "edited"
    lxc(stack, "config", "metadata", "edit", name, stdin=yaml.safe_dump(meta))
    shown = yaml.safe_load(lxc(stack, "config", "metadata", "show", name).stdout)
    assert shown["templates"]["/etc/motd"]["template"] == "motd.tpl"
    assert shown["properties"]["description"] == "edited"

    lxc(stack, "start", name)
    motd = lxc(stack, "exec", name, "--", "cat", "/etc/motd").stdout
    assert motd == f"hello from {name}\n"

    lxc(stack, "config", "template", "delete", name, "motd.tpl")
    assert "motd.tpl" not in lxc(stack, "config", "template", "list", name, "--format",
                                 "csv").stdout.split()
    r = lxc(stack, "config", "template", "show", name, "motd.tpl", check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    lxc(stack, "delete", "--force", name)


def test_bad_names_and_metadata_are_refused(world, stack, api):
    name = world.name("metabad")
    lxc(stack, "init", world.image, name, "-p", world.profile)
    base = f"/1.0/instances/{name}/metadata/templates"
    for bad in ("../../etc/passwd", "a/b", "..", ""):
        r = api.post(base, params={"path": bad}, content=b"x")
        assert r.status_code == 400, (bad, r.text)
    assert api.delete(base, params={"path": "nope.tpl"}).status_code == 404
    assert api.get(base, params={"path": "../metadata.yaml"}).status_code == 400
    assert not (world.volume(name).parent / "x").exists()

    meta = yaml.safe_load(lxc(stack, "config", "metadata", "show", name).stdout)
    meta["creation_date"] = 0  # every later start would refuse it
    r = lxc(stack, "config", "metadata", "edit", name, stdin=yaml.safe_dump(meta), check=False)
    assert r.returncode != 0 and "creation_date" in r.stderr
    r = api.put(f"/1.0/instances/{name}/metadata", json={"creation_date": "yesterday"})
    assert r.status_code == 400 and "creation_date" in r.json()["error"]
    r = api.put(f"/1.0/instances/{name}/metadata", json=meta,
                headers={"If-Match": '"not-the-etag"'})
    assert r.status_code == 412
    assert api.get("/1.0/instances/nosuch/metadata").status_code == 404
    lxc(stack, "start", name)  # nothing refused was written: it still starts
    lxc(stack, "delete", "--force", name)
