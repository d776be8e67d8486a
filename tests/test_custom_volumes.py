"""Custom storage volumes through the stock `lxc` client, the REST API and `corral`.

A dir pool and a btrfs loop pool (module-scoped, named with a unique prefix) hold the
volumes every test makes; each test names its volumes with its own ``uid``. What is
checked is what is on disk as well as what the API says: the quota of a btrfs volume
really stops writes, a restore really brings the old content back, a copy across pools
carries content and snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from .stack import BIN
from .world import lxc

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs btrfs-progs"),
    pytest.mark.skipif(shutil.which("lxc") is None, reason="needs the stock lxc client"),
]
DRIVERS = ["dir", "btrfs"]


# -- fixtures and helpers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pools(stack, api):
    """{driver: pool name}: one dir and one btrfs pool for the module, removed at the end
    (custom volumes first, whatever the tests left)."""
    prefix = "cv" + uuid.uuid4().hex[:6]
    made = {}
    for driver in DRIVERS:
        name = f"{prefix}{driver}"
        config = {"size": "512MiB"} if driver == "btrfs" else {}
        r = api.post("/1.0/storage-pools", json={"name": name, "driver": driver,
                                                 "config": config})
        assert r.status_code == 200, r.text
        made[driver] = name
    yield made
    for name in made.values():
        r = api.get(f"/1.0/storage-pools/{name}/volumes/custom",
                    params={"recursion": 1, "all-projects": "true"})
        for v in r.json()["metadata"] or [] if r.status_code == 200 else []:
            if "/" not in v["name"]:
                api.delete(f"/1.0/storage-pools/{name}/volumes/custom/{v['name']}",
                           params={"project": v["project"]})
        api.delete(f"/1.0/storage-pools/{name}")


def vol_path(stack, pool: str, name: str, snapshot: str | None = None) -> Path:
    base = stack.dir / "storage-pools" / pool
    if snapshot:
        return base / "custom-snapshots" / name / snapshot
    return base / "custom" / name


def url(pool: str, name: str = "") -> str:
    out = f"/1.0/storage-pools/{pool}/volumes/custom"
    return f"{out}/{name}" if name else out


def kv_record(api, pool: str, name: str) -> bool:
    """Whether the API knows the volume (its KV record, made or being made)."""
    return api.get(url(pool, name)).status_code == 200


def corral(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=120)


def create(api, pool: str, name: str, **body) -> None:
    r = api.post(url(pool), json={"name": name, "type": "custom", **body})
    assert r.status_code == 200, r.text


# -- CRUD ---------------------------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_crud_through_the_stock_client(stack, api, pools, uid, driver):
    pool = pools[driver]
    lxc(stack, "storage", "volume", "create", pool, uid, "user.color=blue")
    assert api.patch(url(pool, uid), json={"description": "data"}).status_code == 200
    assert vol_path(stack, pool, uid).is_dir()
    shown = yaml.safe_load(lxc(stack, "storage", "volume", "show", pool, uid).stdout)
    assert shown["name"] == uid and shown["type"] == "custom"
    assert shown["content_type"] == "filesystem" and shown["used_by"] == []
    assert shown["config"] == {"user.color": "blue"}
    assert shown["description"] == "data"
    listed = json.loads(lxc(stack, "storage", "volume", "list", pool, "--format",
                            "json").stdout)
    assert [v["name"] for v in listed if v["type"] == "custom"] == [uid]

    lxc(stack, "storage", "volume", "set", pool, uid, "user.size", "big")
    assert lxc(stack, "storage", "volume", "get", pool, uid,
               "user.size").stdout.strip() == "big"
    lxc(stack, "storage", "volume", "unset", pool, uid, "user.size")
    assert "user.size" not in api.get(url(pool, uid)).json()["metadata"]["config"]

    lxc(stack, "storage", "volume", "rename", pool, uid, f"{uid}b")
    assert api.get(url(pool, uid)).status_code == 404
    assert not vol_path(stack, pool, uid).exists()
    assert vol_path(stack, pool, f"{uid}b").is_dir()

    lxc(stack, "storage", "volume", "delete", pool, f"{uid}b")
    assert api.get(url(pool, f"{uid}b")).status_code == 404
    assert not vol_path(stack, pool, f"{uid}b").exists()


@pytest.mark.parametrize("driver", DRIVERS)
def test_bad_requests_get_lxd_errors_and_make_nothing(stack, api, pools, uid, driver):
    pool = pools[driver]
    create(api, pool, uid)
    r = api.post(url(pool), json={"name": uid, "type": "custom"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    for body, code, words in [
            ({"name": "a/b"}, 400, "name"),
            ({"name": ""}, 400, "name"),
            ({"name": f"{uid}x", "config": {"bogus": "1"}}, 400, "bogus"),
            ({"name": f"{uid}x", "config": {"size": 12}}, 400, "config"),
            ({"name": f"{uid}x", "config": {"size": "lots"}}, 400, "size"),
            ({"name": f"{uid}x", "content_type": "tape"}, 400, "content type"),
            ({"name": f"{uid}x", "type": "container"}, 400, "container")]:
        r = api.post(url(pool), json=body)
        assert r.status_code == code, (body, r.text)
        assert words in r.json()["error"], (body, r.json()["error"])
    assert not vol_path(stack, pool, f"{uid}x").exists()
    assert api.get(url(pool, f"{uid}x")).status_code == 404
    assert api.get(url(pool, "nothere")).status_code == 404
    assert api.get(url("nopool", uid)).status_code == 404
    assert api.post(url("nopool"), json={"name": uid}).status_code == 404
    assert api.delete(url(pool, "nothere")).status_code == 404
    r = api.put(url(pool, uid), json={"config": {"user.a": "b"}},
                headers={"If-Match": "not-the-etag"})
    assert r.status_code == 412
    api.delete(url(pool, uid))


def test_dir_refuses_size_and_btrfs_enforces_it(stack, api, pools, uid):
    r = api.post(url(pools["dir"]), json={"name": uid, "config": {"size": "20MiB"}})
    assert r.status_code == 400 and "quotas" in r.json()["error"]
    assert not vol_path(stack, pools["dir"], uid).exists()
    create(api, pools["dir"], uid)
    r = api.patch(url(pools["dir"], uid), json={"config": {"size": "20MiB"}})
    assert r.status_code == 400 and "quotas" in r.json()["error"]
    assert api.get(url(pools["dir"], uid)).json()["metadata"]["config"] == {}

    pool = pools["btrfs"]
    lxc(stack, "storage", "volume", "create", pool, uid, "size=16MiB")
    path = vol_path(stack, pool, uid)

    def write(name: str, mib: int) -> None:
        with open(path / name, "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(1 << 20))
                fh.flush()
            os.fsync(fh.fileno())

    with pytest.raises(OSError):
        write("big", 40)
    (path / "big").unlink()
    subprocess.run(["sync"], check=True)
    lxc(stack, "storage", "volume", "set", pool, uid, "size=96MiB")
    write("big", 40)  # the new limit applies at once
    assert api.get(url(pool, uid)).json()["metadata"]["config"]["size"] == "96MiB"
    lxc(stack, "storage", "volume", "delete", pool, uid)
    lxc(stack, "storage", "volume", "delete", pools["dir"], uid)


@pytest.mark.parametrize("driver", DRIVERS)
def test_block_volume_is_a_sparse_file_of_its_size(stack, api, pools, uid, driver):
    pool = pools[driver]
    lxc(stack, "storage", "volume", "create", pool, uid, "--type=block", "size=64MiB")
    img = vol_path(stack, pool, uid) / "root.img"
    assert img.stat().st_size == 64 << 20 and img.stat().st_blocks == 0
    shown = api.get(url(pool, uid)).json()["metadata"]
    assert shown["content_type"] == "block" and shown["config"]["size"] == "64MiB"
    lxc(stack, "storage", "volume", "set", pool, uid, "size=128MiB")
    assert img.stat().st_size == 128 << 20
    r = api.patch(url(pool, uid), json={"config": {"size": "32MiB"}})
    assert r.status_code == 400 and "shrunk" in r.json()["error"]
    assert img.stat().st_size == 128 << 20
    create(api, pool, f"{uid}d", content_type="block")  # LXD's default size: 10GiB
    assert (vol_path(stack, pool, f"{uid}d") / "root.img").stat().st_size == 10 << 30
    for name in (uid, f"{uid}d"):
        lxc(stack, "storage", "volume", "delete", pool, name)
