"""``lxc publish`` (issue 10): an instance or a snapshot becomes an image of the image
service, in each compression, with properties and aliases, and ``lxc launch`` starts a
new instance from it that has the published files. A running instance is refused unless
``--force`` (the client stops and restarts it).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from shared.image.format import detect_format

from .world import lxc, make_world, wait_op

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        yield w


def sh(stack, name: str, script: str) -> str:
    return lxc(stack, "exec", name, "--", "sh", "-c", script).stdout


def fingerprint_of(out: str) -> str:
    m = re.search(r"fingerprint: ([0-9a-f]{64})", out)
    assert m, out
    return m.group(1)


def drop_image(api, fp: str) -> None:
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        wait_op(api, r)


@pytest.mark.parametrize("compression", ["none", "gzip", "xz", "zstd"])
def test_publish_then_launch(world, stack, api, tmp_path, compression):
    src, dst = world.name(f"pub{compression}"), world.name(f"from{compression}")
    alias = f"{world.prefix}-img-{compression}"
    lxc(stack, "launch", world.image, src, "-p", world.profile)
    sh(stack, src, f"echo {compression} > /root/published")
    r = lxc(stack, "publish", src, "--alias", alias, check=False)
    assert r.returncode != 0 and "running" in r.stderr  # needs --force
    out = lxc(stack, "publish", src, "--alias", alias, "--force",
              "--compression", compression, "os=busybox", "release=pub").stdout
    fp = fingerprint_of(out)
    try:
        assert world.live(src)["status"] == "Running"  # --force started it again
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["properties"] == {"os": "busybox", "release": "pub"}
        assert img["type"] == "container" and [a["name"] for a in img["aliases"]] == [alias]
        lxc(stack, "image", "export", fp, str(tmp_path / "img"))
        exported = next(tmp_path.iterdir())
        want = {"none": "tar", "gzip": "gzip", "xz": "xz", "zstd": "zstd"}[compression]
        assert detect_format(exported) == want
        lxc(stack, "launch", alias, dst, "-p", world.profile)
        assert sh(stack, dst, "cat /root/published").strip() == compression
        assert sh(stack, dst, "hostname").strip() == dst  # the image's templates came along
        rows = json.loads(lxc(stack, "image", "list", "--format", "json").stdout)
        assert any(r["fingerprint"] == fp for r in rows)
    finally:
        lxc(stack, "delete", "--force", src, check=False)
        lxc(stack, "delete", "--force", dst, check=False)
        drop_image(api, fp)


def test_publish_a_snapshot(world, stack, api):
    src, dst = world.name("pubsnap"), world.name("fromsnap")
    lxc(stack, "launch", world.image, src, "-p", world.profile)
    sh(stack, src, "echo before > /root/v")
    lxc(stack, "snapshot", src, "s0")
    sh(stack, src, "echo after > /root/v")
    # a snapshot of a running instance needs no stop
    fp = fingerprint_of(lxc(stack, "publish", f"{src}/s0").stdout)
    try:
        assert world.live(src)["status"] == "Running"
        lxc(stack, "launch", fp, dst, "-p", world.profile)
        assert sh(stack, dst, "cat /root/v").strip() == "before"
    finally:
        lxc(stack, "delete", "--force", src, check=False)
        lxc(stack, "delete", "--force", dst, check=False)
        drop_image(api, fp)


def test_bad_publish_requests(world, stack, api):
    name = world.name("pubbad")
    lxc(stack, "init", world.image, name, "-p", world.profile)
    before = {i["fingerprint"] for i in api.get("/1.0/images?recursion=1").json()["metadata"]}

    def post(source, **kw):
        return api.post("/1.0/images", json={"source": source, **kw})

    assert post({"type": "instance"}).status_code == 400
    assert post({"type": "snapshot", "name": name}).status_code == 400
    assert post({"type": "instance", "name": f"{name}/s0"}).status_code == 400
    assert post({"type": "instance", "name": name},
                compression_algorithm="lz4").status_code == 400
    r = post({"type": "instance", "name": "nope"})
    op = wait_op(api, r, ok=False)
    assert op["status"] == "Failure" and "not found" in op["err"]
    r = post({"type": "snapshot", "name": f"{name}/nope"})
    assert wait_op(api, r, ok=False)["status"] == "Failure"
    # an alias already taken: no image is left behind
    r = post({"type": "instance", "name": name}, aliases=[{"name": world.image}])
    op = wait_op(api, r, ok=False)
    assert op["status"] == "Failure" and "Alias already exists" in op["err"]
    after = {i["fingerprint"] for i in api.get("/1.0/images?recursion=1").json()["metadata"]}
    assert after == before
    lxc(stack, "delete", name)
