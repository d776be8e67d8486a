"""``lxc copy`` and ``lxc move --storage`` through the stock client (issue 10), on btrfs
and dir pools: the copy has the source's files and snapshots, its own MACs and uuid, the
``copy`` templates rendered; from a snapshot, ``--instance-only``, ``--refresh``, to
another pool; bad requests are LXD's errors and leave nothing; a crash mid-copy leaves no
volume, snapshot or record after the restart.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .stack import BIN, Stack
from .world import lxc, make_world, wait_op

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)

OTHER = {"btrfs": "dir", "dir": "btrfs"}


@pytest.fixture(scope="module", params=["btrfs", "dir"])
def world(request, stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True,
                    pool_driver=request.param) as w:
        other = f"{w.prefix}q"  # a second pool of the other driver, for -s / --storage
        config = {} if OTHER[request.param] == "dir" else {"size": "768MiB"}
        r = api.post("/1.0/storage-pools", json={"name": other, "driver": OTHER[request.param],
                                                 "config": config})
        assert r.status_code == 200, r.text
        w.other = other  # type: ignore[attr-defined]
        try:
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            api.delete(f"/1.0/storage-pools/{other}")


def volume(stack: Stack, pool: str, name: str) -> Path:
    return stack.dir / "storage-pools" / pool / "containers" / name


def sh(stack: Stack, name: str, script: str) -> str:
    return lxc(stack, "exec", name, "--", "sh", "-c", script).stdout


def add_copy_template(api: httpx.Client, name: str) -> None:
    """A template rendered only by a copy: /etc/copied names the instance it is in."""
    r = api.post(f"/1.0/instances/{name}/metadata/templates", params={"path": "copied.tpl"},
                 content=b"copied as {{ container.name }}\n")
    assert r.status_code == 200, r.text
    meta = api.get(f"/1.0/instances/{name}/metadata").json()["metadata"]
    meta["templates"]["/etc/copied"] = {"when": ["copy"], "template": "copied.tpl"}
    r = api.put(f"/1.0/instances/{name}/metadata", json=meta)
    assert r.status_code == 200, r.text


def snapshot_names(api: httpx.Client, name: str) -> list[str]:
    r = api.get(f"/1.0/instances/{name}/snapshots")
    assert r.status_code == 200, r.text
    return sorted(u.rsplit("/", 1)[-1] for u in r.json()["metadata"])


def test_copy_of_a_running_container(world, stack, api):
    """Files come along; MAC, uuid and host name are the copy's own; templates with
    ``when: copy`` render into the copy only; the copy is stopped, then starts."""
    a, b = world.name("src"), world.name("cp")
    lxc(stack, "launch", world.image, a, "-p", world.profile)
    sh(stack, a, "echo precious > /root/marker")
    add_copy_template(api, a)
    lxc(stack, "copy", a, b)
    src, dst = world.get(a), world.get(b)
    assert dst["status"] == "Stopped" and src["status"] == "Running"
    assert dst["config"]["volatile.base_image"] == src["config"]["volatile.base_image"]
    assert dst["config"]["volatile.uuid"] != src["config"]["volatile.uuid"]
    assert dst["config"]["volatile.last_state.power"] == "STOPPED"
    assert dst["config"]["volatile.eth0.hwaddr"] != src["config"]["volatile.eth0.hwaddr"]
    assert dst["profiles"] == [world.profile] and dst["expanded_devices"]["root"]["pool"] \
        == world.pool
    assert (volume(stack, world.pool, b) / "rootfs/etc/copied").read_text() \
        == f"copied as {b}\n"
    assert not (volume(stack, world.pool, a) / "rootfs/etc/copied").exists()
    lxc(stack, "start", b)
    assert sh(stack, b, "cat /root/marker") == "precious\n"
    assert sh(stack, b, "hostname").strip() == b
    mac = sh(stack, b, "cat /sys/class/net/eth0/address").strip()
    assert mac == dst["config"]["volatile.eth0.hwaddr"]
    assert mac != sh(stack, a, "cat /sys/class/net/eth0/address").strip()
    lxc(stack, "delete", "--force", a, b)
    assert not volume(stack, world.pool, b).exists()


def test_copy_with_snapshots_instance_only_and_from_a_snapshot(world, stack, api):
    a, b, c, d = (world.name(t) for t in ("snsrc", "sncp", "snonly", "snfrom"))
    lxc(stack, "init", world.image, a, "-p", world.profile)
    lxc(stack, "start", a)
    sh(stack, a, "echo one > /root/v")
    lxc(stack, "snapshot", a, "s0")
    sh(stack, a, "echo two > /root/v")
    lxc(stack, "snapshot", a, "s1")
    sh(stack, a, "echo three > /root/v")
    lxc(stack, "stop", a, "--force")

    lxc(stack, "copy", a, b)
    assert snapshot_names(api, b) == ["s0", "s1"]
    assert "s0" in lxc(stack, "info", b).stdout
    shot = api.get(f"/1.0/instances/{b}/snapshots/s0").json()["metadata"]
    assert shot["name"] == "s0"
    lxc(stack, "copy", a, c, "--instance-only")
    assert snapshot_names(api, c) == []
    lxc(stack, "copy", f"{a}/s0", d)
    assert snapshot_names(api, d) == []
    for name, want in ((b, "three"), (c, "three"), (d, "one")):
        lxc(stack, "start", name)
        assert sh(stack, name, "cat /root/v").strip() == want, name
    # a restore of a copied snapshot brings the copy's own content back
    lxc(stack, "restore", b, "s1")
    assert sh(stack, b, "cat /root/v").strip() == "two"
    # snapshots move with their instance to another pool, and still restore there
    lxc(stack, "move", b, "--storage", world.other)
    assert snapshot_names(api, b) == ["s0", "s1"]
    assert world.get(b)["devices"]["root"]["pool"] == world.other
    lxc(stack, "restore", b, "s0")
    assert sh(stack, b, "cat /root/v").strip() == "one"
    # a rename (lxc move a b) carries the snapshots along
    lxc(stack, "stop", b, "--force")
    e = world.name("snren")
    lxc(stack, "move", b, e)
    assert snapshot_names(api, e) == ["s0", "s1"]
    assert api.get(f"/1.0/instances/{b}/snapshots").status_code == 404
    lxc(stack, "delete", "--force", a, c, d, e)
    assert api.get(f"/1.0/instances/{e}/snapshots").status_code == 404


def test_refresh_brings_the_copy_up_to_date(world, stack, api):
    a, b = world.name("rfsrc"), world.name("rfcp")
    lxc(stack, "init", world.image, a, "-p", world.profile)
    lxc(stack, "start", a)
    sh(stack, a, "echo old > /root/v")
    lxc(stack, "snapshot", a, "s0")
    lxc(stack, "copy", a, b)
    sh(stack, a, "echo new > /root/v")
    lxc(stack, "snapshot", a, "s1")
    lxc(stack, "stop", a, "--force")
    mac = world.get(b)["config"]["volatile.eth0.hwaddr"]
    lxc(stack, "copy", a, b, "--refresh")
    assert snapshot_names(api, b) == ["s0", "s1"]
    assert world.get(b)["config"]["volatile.eth0.hwaddr"] == mac  # still the copy's own
    lxc(stack, "start", b)
    assert sh(stack, b, "cat /root/v").strip() == "new"
    r = lxc(stack, "copy", a, b, "--refresh", check=False)  # b runs now
    assert r.returncode != 0 and "stop" in r.stderr
    lxc(stack, "delete", "--force", a, b)


def test_copy_and_move_to_another_pool(world, stack, api):
    a, b = world.name("plsrc"), world.name("plcp")
    lxc(stack, "init", world.image, a, "-p", world.profile)
    lxc(stack, "start", a)
    sh(stack, a, "echo here > /root/v")
    lxc(stack, "copy", a, b, "-s", world.other)
    dst = world.get(b)
    assert dst["devices"]["root"]["pool"] == world.other
    assert volume(stack, world.other, b).is_dir() and not volume(stack, world.pool, b).exists()
    lxc(stack, "start", b)
    assert sh(stack, b, "cat /root/v").strip() == "here"
    lxc(stack, "delete", "--force", b)

    before = world.get(a)
    lxc(stack, "move", a, "--storage", world.other)  # running: stopped and started again
    after = world.get(a)
    assert after["status"] == "Running"
    assert after["devices"]["root"]["pool"] == world.other
    assert after["config"]["volatile.eth0.hwaddr"] == before["config"]["volatile.eth0.hwaddr"]
    assert after["config"]["volatile.uuid"] == before["config"]["volatile.uuid"]
    assert sh(stack, a, "cat /root/v").strip() == "here"
    assert not volume(stack, world.pool, a).exists()
    assert volume(stack, world.other, a).is_dir()
    r = api.post(f"/1.0/instances/{a}", json={"migration": True, "pool": world.other})
    assert r.status_code == 400 and "already" in r.json()["error"], r.text
    r = api.post(f"/1.0/instances/{a}", json={"migration": True, "pool": world.pool,
                                               "live": False})
    assert r.status_code == 400 and "stopped" in r.json()["error"], r.text
    # back to the first pool under a new name, in one request
    a2 = world.name("plmv2")
    lxc(stack, "move", a, a2, "--storage", world.pool)
    assert api.get(f"/1.0/instances/{a}").status_code == 404
    moved = world.get(a2)
    assert moved["status"] == "Running" and moved["devices"]["root"]["pool"] == world.pool
    assert sh(stack, a2, "cat /root/v").strip() == "here"
    assert not volume(stack, world.other, a).exists() and not volume(stack, world.pool, a).exists()
    lxc(stack, "delete", "--force", a2)
    assert not volume(stack, world.other, a).exists()


def test_bad_copies_are_refused_and_leave_nothing(world, stack, api):
    a = world.name("bad")
    lxc(stack, "init", world.image, a, "-p", world.profile)
    before = set(api.get("/1.0/instances").json()["metadata"])

    def post(body):
        return api.post("/1.0/instances", json=body)

    r = post({"name": world.name("x1"), "source": {"type": "copy", "source": "nope"}})
    assert r.status_code == 404 and "not found" in r.json()["error"], r.text
    r = post({"name": world.name("x2"), "source": {"type": "copy", "source": f"{a}/nope"}})
    assert r.status_code == 404, r.text
    r = post({"name": a, "source": {"type": "copy", "source": a}})
    assert r.status_code == 409 and "already exists" in r.json()["error"], r.text
    r = post({"name": "bad_name!", "source": {"type": "copy", "source": a}})
    assert r.status_code == 400, r.text
    r = post({"name": world.name("x3"), "source": {"type": "copy"}})
    assert r.status_code == 400 and "source" in r.json()["error"], r.text
    r = post({"name": world.name("x4"), "type": "virtual-machine",
              "source": {"type": "copy", "source": a}})
    assert r.status_code == 400, r.text
    r = post({"name": world.name("x5"), "source": {"type": "copy", "source": a},
              "devices": {"root": {"type": "disk", "path": "/", "pool": "nopool"}}})
    op = wait_op(api, r, ok=False) if r.status_code == 202 else None
    assert r.status_code == 404 or (op and op["status"] == "Failure"), r.text
    r = lxc(stack, "copy", "nope", world.name("x6"), check=False)
    assert r.returncode != 0 and "not found" in r.stderr.lower()
    assert set(api.get("/1.0/instances").json()["metadata"]) == before
    # no target name: the server picks one, named in the operation's resources
    op = wait_op(api, post({"source": {"type": "copy", "source": a}}))
    [picked_url] = op["resources"]["instances"]
    picked = picked_url.rsplit("/", 1)[-1]
    assert world.get(picked)["config"]["volatile.base_image"] == world.fingerprint
    lxc(stack, "delete", picked)
    for tag in ("x1", "x2", "x3", "x4", "x5", "x6"):
        assert not volume(stack, world.pool, f"{world.prefix}-{tag}").exists()
    lxc(stack, "delete", a)


def corral(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_corral_copy_move_publish(world, stack, api):
    a, b, c, d = (world.name(t) for t in ("clisrc", "clicp", "climv", "clipub"))
    alias = f"{world.prefix}-cli-img"
    lxc(stack, "launch", world.image, a, "-p", world.profile)
    sh(stack, a, "echo cli > /root/v")
    corral(stack, "copy", a, b, "-s", world.other, "-c", "user.note=copied")
    got = world.get(b)
    assert got["config"]["user.note"] == "copied"
    assert got["expanded_devices"]["root"]["pool"] == world.other
    corral(stack, "move", b, "--storage", world.pool)
    assert world.get(b)["expanded_devices"]["root"]["pool"] == world.pool
    corral(stack, "move", b, c)
    assert api.get(f"/1.0/instances/{b}").status_code == 404
    r = corral(stack, "publish", a, "--alias", alias, check=False)
    assert r.returncode != 0 and "--force" in r.stderr
    out = corral(stack, "publish", a, "os=cli", "--alias", alias, "--force",
                 "--compression", "xz").stdout
    fp = out.strip().rsplit(" ", 1)[-1]
    try:
        assert world.live(a)["status"] == "Running"
        assert api.get(f"/1.0/images/{fp}").json()["metadata"]["properties"] == {"os": "cli"}
        lxc(stack, "launch", alias, d, "-p", world.profile)
        assert sh(stack, d, "cat /root/v").strip() == "cli"
        lxc(stack, "start", c)
        assert sh(stack, c, "cat /root/v").strip() == "cli"
    finally:
        lxc(stack, "delete", "--force", a, c, d, check=False)
        r = api.delete(f"/1.0/images/{fp}")
        if r.status_code == 202:
            wait_op(api, r)
    r = corral(stack, "copy", "nope", world.name("clinope"), check=False)
    assert r.returncode != 0 and "not found" in r.stderr


def test_copy_into_another_project(world, stack, api):
    """``lxc copy a b --target-project p`` (container_copy_project): one request with
    ``source.project``; the copy lives in ``p`` beside a same-named one of ``default``."""
    proj = f"{world.prefix}pr2"
    r = api.post("/1.0/projects", json={"name": proj, "config": {
        "features.images": "false", "features.profiles": "false"}})
    assert r.status_code in (200, 201), r.text
    a = world.name("prjsrc")
    try:
        lxc(stack, "init", world.image, a, "-p", world.profile)
        lxc(stack, "start", a)
        sh(stack, a, "echo project > /root/v")
        lxc(stack, "copy", a, a, "--target-project", proj)
        got = api.get(f"/1.0/instances/{a}", params={"project": proj}).json()["metadata"]
        assert got["project"] == proj and got["status"] == "Stopped"
        lxc(stack, "start", a, "--project", proj)
        out = lxc(stack, "exec", a, "--project", proj, "--", "cat", "/root/v").stdout
        assert out.strip() == "project"
        assert world.live(a)["status"] == "Running"  # the source, untouched
        # a copy counts against the project's limits like a create
        r = api.patch(f"/1.0/projects/{proj}", json={"config": {"limits.instances": "1"}})
        assert r.status_code == 200, r.text
        r = api.post("/1.0/instances", params={"project": proj}, json={
            "name": f"{a}x", "source": {"type": "copy", "source": a, "project": "default"}})
        assert r.status_code == 400 and "maximum number of instances" in r.json()["error"], r.text
    finally:
        lxc(stack, "delete", "--force", a, "--project", proj, check=False)
        lxc(stack, "delete", "--force", a, check=False)
        api.delete(f"/1.0/projects/{proj}")
