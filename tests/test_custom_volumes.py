"""Custom storage volumes through the stock `lxc` client, the REST API and `corral`.

A dir pool and a btrfs loop pool (module-scoped, named with a unique prefix) hold the
volumes every test makes; each test names its volumes with its own ``uid``. What is
checked is what is on disk as well as what the API says: the quota of a btrfs volume
really stops writes, a restore really brings the old content back, a copy across pools
carries content and snapshots.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from .stack import BIN, socket_client, wait_for
from .test_faults import restart
from .world import lxc, make_world, wait_op

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


@pytest.fixture(scope="module", autouse=True)
def scheduled_volume(api):
    """(pool, volume): a volume snapshotted every minute (``* * * * *``) on a btrfs pool
    of its own (the module's pools' listings stay the tests'), made when the module
    starts so that test_scheduled_snapshots (the module's last) finds its snapshot taken
    while the other tests ran, rather than waiting up to a minute for it."""
    pool = name = "cv" + uuid.uuid4().hex[:6] + "cron"
    r = api.post("/1.0/storage-pools", json={"name": pool, "driver": "btrfs",
                                             "config": {"size": "256MiB"}})
    assert r.status_code == 200, r.text
    try:
        create(api, pool, name, config={"snapshots.schedule": "* * * * *",
                                        "snapshots.pattern": "auto%d",
                                        "snapshots.expiry": "1d"})
        yield pool, name
    finally:
        api.delete(url(pool, name))
        api.delete(f"/1.0/storage-pools/{pool}")


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
    # lxc's filters (filter= on the listing) are applied, not ignored
    assert lxc(stack, "storage", "volume", "list", pool, f"name={uid}", "--format", "csv",
               "-c", "tn").stdout.strip() == f"custom,{uid}"
    assert lxc(stack, "storage", "volume", "list", pool, "name=nothing", "--format",
               "csv").stdout.strip() == ""
    for path in ("volumes", "volumes/custom"):
        r = api.get(f"/1.0/storage-pools/{pool}/{path}", params={"filter": f"name eq {uid}"})
        assert r.json()["metadata"] == [f"/1.0/storage-pools/{pool}/volumes/custom/{uid}"]
        r = api.get(f"/1.0/storage-pools/{pool}/{path}", params={"filter": "name eq x"})
        assert r.json()["metadata"] == []

    used = api.get(f"/1.0/storage-pools/{pool}").json()["metadata"]["used_by"]
    assert f"/1.0/storage-pools/{pool}/volumes/custom/{uid}" in used  # as LXD's
    lxc(stack, "storage", "volume", "set", pool, uid, "user.size", "big")
    assert lxc(stack, "storage", "volume", "get", pool, uid,
               "user.size").stdout.strip() == "big"
    lxc(stack, "storage", "volume", "unset", pool, uid, "user.size")
    assert "user.size" not in api.get(url(pool, uid)).json()["metadata"]["config"]

    info = lxc(stack, "storage", "volume", "info", pool, uid).stdout
    assert f"Name: {uid}" in info and "Type: custom" in info
    r = subprocess.run(["lxc", "storage", "volume", "edit", pool, uid],
                       input="description: edited\nconfig:\n  user.color: red\n",
                       env={**stack.env, "LXD_DIR": str(stack.dir)}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = api.get(url(pool, uid)).json()["metadata"]
    assert shown["description"] == "edited" and shown["config"] == {"user.color": "red"}
    # the block volume of a VM disk says so wherever it is read (volume_get too)
    create(api, pool, f"{uid}k", content_type="block", config={"size": "8MiB"})
    kinds = {v["name"]: v["content_type"] for v in api.get(
        f"/1.0/storage-pools/{pool}/volumes", params={"recursion": 1}).json()["metadata"]}
    assert kinds[f"{uid}k"] == "block" and kinds[uid] == "filesystem"
    lxc(stack, "storage", "volume", "delete", pool, f"{uid}k")

    lxc(stack, "storage", "volume", "move", f"{pool}/{uid}", f"{pool}/{uid}m")  # a rename
    assert vol_path(stack, pool, f"{uid}m").is_dir() and not vol_path(stack, pool,
                                                                       uid).exists()
    lxc(stack, "storage", "volume", "rename", pool, f"{uid}m", uid)
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
    subprocess.run(["sync"], check=True)
    wait_for(lambda: (api.get(url(pool, uid) + "/state").json()["metadata"]["usage"]
                      or {}).get("used", 0) >= 40 << 20, 30, what="the volume's usage")
    assert api.get(url(pool, uid) + "/state").json()["metadata"]["usage"]["total"] == \
        96 << 20
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


# -- snapshots ----------------------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_snapshots_restore_rename_and_expiry(stack, api, pools, uid, driver):
    pool = pools[driver]
    lxc(stack, "storage", "volume", "create", pool, uid)
    data = vol_path(stack, pool, uid) / "data"
    data.write_text("one")
    lxc(stack, "storage", "volume", "snapshot", pool, uid, "s0")
    data.write_text("two")
    (vol_path(stack, pool, uid) / "later").write_text("x")
    assert (vol_path(stack, pool, uid, "s0") / "data").read_text() == "one"
    r = api.get(url(pool, uid) + "/snapshots", params={"recursion": 1})
    [snap] = r.json()["metadata"]
    assert snap["name"] == "s0" and snap["expires_at"].startswith("0001-01-01")
    listed = json.loads(lxc(stack, "storage", "volume", "list", pool, "--format",
                            "json").stdout)
    assert {f"{uid}/s0", uid} <= {v["name"] for v in listed}

    lxc(stack, "storage", "volume", "restore", pool, uid, "s0")
    assert data.read_text() == "one"
    assert not (vol_path(stack, pool, uid) / "later").exists()
    assert (vol_path(stack, pool, uid, "s0") / "data").read_text() == "one"

    lxc(stack, "storage", "volume", "rename", pool, f"{uid}/s0", f"{uid}/s1")
    assert api.get(url(pool, uid) + "/snapshots/s0").status_code == 404
    assert api.get(url(pool, uid) + "/snapshots/s1").status_code == 200
    r = lxc(stack, "storage", "volume", "restore", pool, uid, "s0", check=False)
    assert r.returncode != 0 and "not found" in r.stderr.lower()

    # expires_at given by the client, and the volume's snapshots.expiry for a new one
    r = api.post(url(pool, uid) + "/snapshots",
                 json={"name": "s2", "expires_at": "2031-02-03T04:05:06Z"})
    wait_op(api, r)
    assert api.get(url(pool, uid) + "/snapshots/s2").json()["metadata"][
        "expires_at"].startswith("2031-02-03T04:05:06")
    lxc(stack, "storage", "volume", "set", pool, uid, "snapshots.expiry=2d")
    wait_op(api, api.post(url(pool, uid) + "/snapshots", json={}))  # snap%d: snap0
    auto = api.get(url(pool, uid) + "/snapshots/snap0").json()["metadata"]
    expires = datetime.fromisoformat(auto["expires_at"][:19] + "+00:00")
    assert abs(expires - datetime.now(timezone.utc) - timedelta(days=2)) < timedelta(hours=1)
    r = api.post(url(pool, uid) + "/snapshots", json={"name": "s1"})
    assert r.status_code == 409

    # an expired snapshot is pruned by the service
    wait_op(api, api.post(url(pool, uid) + "/snapshots",
                          json={"name": "old", "expires_at": "2001-01-01T00:00:00Z"}))
    wait_for(lambda: api.get(url(pool, uid) + "/snapshots/old").status_code == 404, 30,
             what="the expired snapshot to be pruned")
    assert not vol_path(stack, pool, uid, "old").exists()

    lxc(stack, "storage", "volume", "delete", pool, f"{uid}/s1")
    assert not vol_path(stack, pool, uid, "s1").exists()
    lxc(stack, "storage", "volume", "delete", pool, uid)  # with its other snapshots
    assert not vol_path(stack, pool, uid, "s2").exists()
    assert api.get(url(pool, uid)).status_code == 404


# -- copies and moves ---------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [("dir", "btrfs"), ("btrfs", "dir"),
                                     ("btrfs", "btrfs")])
def test_copy_and_move_across_pools_with_snapshots(stack, api, pools, uid, src, dst):
    sp, dp = pools[src], pools[dst]
    lxc(stack, "storage", "volume", "create", sp, uid, "user.k=v")
    (vol_path(stack, sp, uid) / "f").write_text("first")
    lxc(stack, "storage", "volume", "snapshot", sp, uid, "s0")
    (vol_path(stack, sp, uid) / "f").write_text("second")

    lxc(stack, "storage", "volume", "copy", f"{sp}/{uid}", f"{dp}/{uid}c")
    assert (vol_path(stack, dp, f"{uid}c") / "f").read_text() == "second"
    assert (vol_path(stack, dp, f"{uid}c", "s0") / "f").read_text() == "first"
    copied = api.get(url(dp, f"{uid}c")).json()["metadata"]
    assert copied["config"] == {"user.k": "v"}
    assert [s.rsplit("/", 1)[-1] for s in
            api.get(url(dp, f"{uid}c") + "/snapshots").json()["metadata"]] == ["s0"]

    lxc(stack, "storage", "volume", "copy", f"{sp}/{uid}", f"{dp}/{uid}o", "--volume-only")
    assert not vol_path(stack, dp, f"{uid}o", "s0").exists()
    lxc(stack, "storage", "volume", "copy", f"{sp}/{uid}/s0", f"{dp}/{uid}s")
    assert (vol_path(stack, dp, f"{uid}s") / "f").read_text() == "first"

    # --refresh brings a copy up to date: the new snapshot, then the content
    (vol_path(stack, sp, uid) / "f").write_text("third")
    lxc(stack, "storage", "volume", "snapshot", sp, uid, "s1")
    lxc(stack, "storage", "volume", "copy", f"{sp}/{uid}", f"{dp}/{uid}c", "--refresh")
    assert (vol_path(stack, dp, f"{uid}c") / "f").read_text() == "third"
    assert (vol_path(stack, dp, f"{uid}c", "s1") / "f").read_text() == "third"

    r = lxc(stack, "storage", "volume", "copy", f"{sp}/{uid}", f"{dp}/{uid}c", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr

    lxc(stack, "storage", "volume", "move", f"{dp}/{uid}c", f"{sp}/{uid}m")
    assert api.get(url(dp, f"{uid}c")).status_code == 404
    assert not vol_path(stack, dp, f"{uid}c").exists()
    assert not vol_path(stack, dp, f"{uid}c", "s0").exists()
    assert (vol_path(stack, sp, f"{uid}m") / "f").read_text() == "third"
    assert (vol_path(stack, sp, f"{uid}m", "s0") / "f").read_text() == "first"
    for pool, name in [(sp, uid), (sp, f"{uid}m"), (dp, f"{uid}o"), (dp, f"{uid}s")]:
        lxc(stack, "storage", "volume", "delete", pool, name)


def test_copy_into_btrfs_applies_the_size(stack, api, pools, uid):
    create(api, pools["dir"], uid)
    r = api.post(url(pools["btrfs"]), json={
        "name": uid, "type": "custom", "config": {"size": "16MiB"},
        "source": {"type": "copy", "pool": pools["dir"], "name": uid}})
    wait_op(api, r)
    path = vol_path(stack, pools["btrfs"], uid)
    with pytest.raises(OSError):
        with open(path / "big", "wb") as fh:
            for _ in range(40):
                fh.write(os.urandom(1 << 20))
                fh.flush()
            os.fsync(fh.fileno())
    r = api.post(url(pools["btrfs"]), json={"name": f"{uid}x", "source": {
        "type": "copy", "pool": pools["dir"], "name": "nothere"}})
    op = wait_op(api, r, ok=False) if r.status_code == 202 else None
    assert (op and op["status"] == "Failure") or r.status_code == 404
    assert api.get(url(pools["btrfs"], f"{uid}x")).status_code == 404
    assert not vol_path(stack, pools["btrfs"], f"{uid}x").exists()
    api.delete(url(pools["btrfs"], uid))
    api.delete(url(pools["dir"], uid))


# -- projects -----------------------------------------------------------------------------

def test_projects_own_their_volumes_or_use_defaults(stack, api, pools, uid):
    pool = pools["btrfs"]
    own, shared_ = f"{uid}own", f"{uid}sh"
    assert api.post("/1.0/projects", json={"name": own, "config": {
        "features.storage.volumes": "true"}}).status_code in (200, 201)
    assert api.post("/1.0/projects", json={"name": shared_, "config": {
        "features.storage.volumes": "false", "features.images": "false",
        "features.profiles": "false"}}).status_code in (200, 201)
    try:
        create(api, pool, uid)  # default's
        r = api.post(url(pool), params={"project": own}, json={"name": uid})
        assert r.status_code == 200, r.text  # the same name in its own project
        assert vol_path(stack, pool, f"{own}_{uid}").is_dir()
        shown = api.get(url(pool, uid), params={"project": own}).json()["metadata"]
        assert shown["project"] == own
        names = [v["name"] for v in api.get(url(pool), params={
            "project": own, "recursion": 1}).json()["metadata"]]
        assert names == [uid]
        # a project without features.storage.volumes works on default's volumes
        r = api.get(url(pool, uid), params={"project": shared_})
        assert r.status_code == 200 and r.json()["metadata"]["project"] == "default"
        every = api.get(url(pool), params={"all-projects": "true", "recursion": 1})
        assert {(v["name"], v["project"]) for v in every.json()["metadata"]} >= {
            (uid, "default"), (uid, own)}
        env = {**stack.env, "LXD_DIR": str(stack.dir)}
        r = subprocess.run(["lxc", "storage", "volume", "list", pool, "--project", own,
                            "--format", "csv", "-c", "tn"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.stdout.strip() == f"custom,{uid}", r
        assert api.get(url(pool, "x"), params={"project": "nosuch"}).status_code == 404

        # copies and moves between projects
        r = api.post(url(pool), params={"project": own}, json={"name": f"{uid}c", "source": {
            "type": "copy", "pool": pool, "name": uid, "project": shared_}})
        wait_op(api, r)  # shared_ has no volumes of its own: default's is copied
        assert vol_path(stack, pool, f"{own}_{uid}c").is_dir()
        r = api.post(url(pool, f"{uid}c"), params={"project": own},
                     json={"name": f"{uid}c", "project": shared_})
        assert r.status_code == 400 and "features.storage.volumes" in r.json()["error"]
        lxc(stack, "storage", "volume", "move", f"{pool}/{uid}c", f"{pool}/{uid}m",
            "--project", own, "--target-project", "default")
        assert api.get(url(pool, f"{uid}m")).json()["metadata"]["project"] == "default"
        assert not vol_path(stack, pool, f"{own}_{uid}c").exists()
        assert vol_path(stack, pool, f"{uid}m").is_dir()
    finally:
        api.delete(url(pool, uid), params={"project": own})
        api.delete(url(pool, f"{uid}m"))
        api.delete(url(pool, uid))
        api.delete(f"/1.0/projects/{own}")
        api.delete(f"/1.0/projects/{shared_}")


def test_restricted_project_blocks_volume_snapshots(stack, api, pools, uid):
    """``restricted.snapshots`` covers custom volumes too (LXD checks the volume's
    project): blocked by default once the project is restricted, with LXD's message,
    through lxc and REST; nothing is made; ``allow`` lets them through."""
    pool, proj = pools["btrfs"], f"{uid}rs"
    assert api.post("/1.0/projects", json={"name": proj, "config": {
        "features.storage.volumes": "true", "restricted": "true"}}).status_code in (200, 201)
    try:
        r = api.post(url(pool), params={"project": proj}, json={"name": uid})
        assert r.status_code == 200, r.text
        env = {**stack.env, "LXD_DIR": str(stack.dir)}
        r = subprocess.run(["lxc", "storage", "volume", "snapshot", pool, uid, "s0",
                            "--project", proj], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0, r
        assert f'Project "{proj}" doesn\'t allow for snapshot creation' in r.stderr, r.stderr
        r = api.post(url(pool, uid) + "/snapshots", params={"project": proj},
                     json={"name": "s0"})
        assert r.status_code == 400 and "restricted.snapshots=allow" in r.json()["error"]
        assert api.get(url(pool, uid) + "/snapshots",
                       params={"project": proj}).json()["metadata"] == []
        assert api.patch(f"/1.0/projects/{proj}", json={"config": {
            "restricted.snapshots": "allow"}}).status_code == 200
        r = api.post(url(pool, uid) + "/snapshots", params={"project": proj},
                     json={"name": "s0"})
        wait_op(api, r)
        assert len(api.get(url(pool, uid) + "/snapshots",
                           params={"project": proj}).json()["metadata"]) == 1
    finally:
        r = api.delete(url(pool, uid) + "/snapshots/s0", params={"project": proj})
        if r.status_code == 202:
            wait_op(api, r)
        api.delete(url(pool, uid), params={"project": proj})
        api.delete(f"/1.0/projects/{proj}")


def test_project_holding_volumes_lists_them_and_cannot_be_deleted(stack, api, pools, uid):
    """A project's custom volumes are in its ``used_by`` and keep it from being deleted
    (LXD: "Only empty projects can be removed"), so no volume is left without a project."""
    pool, proj = pools["dir"], f"{uid}pv"
    assert api.post("/1.0/projects", json={"name": proj, "config": {
        "features.storage.volumes": "true"}}).status_code in (200, 201)
    try:
        r = api.post(url(pool), params={"project": proj}, json={"name": uid})
        assert r.status_code == 200, r.text
        used = api.get(f"/1.0/projects/{proj}").json()["metadata"]["used_by"]
        assert f"{url(pool, uid)}?project={proj}" in used, used
        r = api.delete(f"/1.0/projects/{proj}")
        assert r.status_code == 400 and "empty" in r.json()["error"], r.text
        assert api.get(url(pool, uid), params={"project": proj}).status_code == 200
        assert api.delete(url(pool, uid), params={"project": proj}).status_code == 200
        assert api.delete(f"/1.0/projects/{proj}").status_code == 200
    finally:
        api.delete(url(pool, uid), params={"project": proj})
        api.delete(f"/1.0/projects/{proj}")


# -- crash safety -------------------------------------------------------------------------

def _armed_storage(stack, point: str) -> None:
    """Restart the storage service so that it kills itself at ``point``."""
    stack.stop("storage")
    env = stack.env
    stack.env = {**env, "CORRAL_FAULT": point}
    try:
        stack.start("storage")
    finally:
        stack.env = env
    wait_for(stack.ready, 60, what="the storage service to answer")


def _died_and_restarted(stack) -> None:
    proc = stack.procs.pop("storage")
    assert proc.wait(30) == -signal.SIGKILL
    stack.start("storage")
    wait_for(stack.ready, 60, what="the storage service to answer again")


def _post_and_give_up(stack, path: str, body: dict) -> None:
    with socket_client(stack, timeout=15) as client:
        try:
            client.post(path, json=body)
        except httpx.HTTPError:
            pass


def test_storage_killed_during_create_leaves_nothing(stack, api, pools, uid):
    """The storage service dies after making the volume, before its record is whole: its
    next start removes both, and the name is free again."""
    pool = pools["btrfs"]
    _armed_storage(stack, "storage:create_done")
    # The gateway waits for an answer that never comes (up to its 120 s): the request is
    # sent from a thread of its own and left to give up; the test goes on once the
    # service is dead (it waited 10 s for its client to give up).
    threading.Thread(target=_post_and_give_up, daemon=True, args=(
        stack, url(pool), {"name": uid, "type": "custom"})).start()
    stack.procs["storage"].wait(30)
    assert vol_path(stack, pool, uid).is_dir()  # made, then killed before the record
    _died_and_restarted(stack)
    assert api.get(url(pool, uid)).status_code == 404
    assert not vol_path(stack, pool, uid).exists()
    assert uid not in json.dumps(api.get(f"/1.0/storage-pools/{pool}/volumes",
                                         params={"recursion": 1}).json()["metadata"])
    create(api, pool, uid)
    api.delete(url(pool, uid))


def test_storage_killed_during_copy_keeps_the_source_whole(stack, api, pools, uid):
    """A copy across pools dies once the data is there, before the record: the operation
    fails, the next start removes the half copy with its snapshots, the source is intact."""
    src, dst = pools["dir"], pools["btrfs"]
    create(api, src, uid)
    (vol_path(stack, src, uid) / "f").write_text("data")
    wait_op(api, api.post(url(src, uid) + "/snapshots", json={"name": "s0"}))
    _armed_storage(stack, "storage:copy_done")
    r = api.post(url(dst), json={"name": uid, "source": {"type": "copy", "pool": src,
                                                         "name": uid}})
    assert r.status_code == 202, r.text
    _died_and_restarted(stack)
    op = api.get(r.json()["operation"] + "/wait", params={"timeout": 60}).json()["metadata"]
    assert op["status"] == "Failure", op
    assert api.get(url(dst, uid)).status_code == 404
    assert not vol_path(stack, dst, uid).exists()
    assert not vol_path(stack, dst, uid, "s0").exists()
    assert (vol_path(stack, src, uid) / "f").read_text() == "data"
    assert vol_path(stack, src, uid, "s0").is_dir()
    wait_op(api, api.post(url(dst), json={"name": uid, "source": {
        "type": "copy", "pool": src, "name": uid}}))  # the name is free again
    for pool in (src, dst):
        api.delete(url(pool, uid))


# -- used_by ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(api, stack, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


def test_used_by_instances_and_profiles_and_delete_refused(stack, api, pools, world, uid):
    pool = pools["btrfs"]
    lxc(stack, "storage", "volume", "create", pool, uid)
    c1 = world.create("cv")
    lxc(stack, "storage", "volume", "attach", pool, uid, c1, "data", "/mnt/data")
    dev = api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]["data"]
    assert dev == {"type": "disk", "pool": pool, "source": uid, "path": "/mnt/data"}
    assert api.get(url(pool, uid)).json()["metadata"]["used_by"] == [f"/1.0/instances/{c1}"]
    listed = json.loads(lxc(stack, "storage", "volume", "list", pool, "--format",
                            "json").stdout)
    assert [v["used_by"] for v in listed if v["name"] == uid] == [[f"/1.0/instances/{c1}"]]

    r = api.delete(url(pool, uid))
    assert r.status_code == 400 and "still in use" in r.json()["error"], r.text
    r = lxc(stack, "storage", "volume", "delete", pool, uid, check=False)
    assert r.returncode != 0 and "in use" in r.stderr
    assert vol_path(stack, pool, uid).is_dir()

    # a rename or a move takes the devices of stopped instances and profiles along (LXD)
    lxc(stack, "storage", "volume", "attach-profile", pool, uid, world.profile, "pdata",
        "/mnt/p")
    lxc(stack, "storage", "volume", "rename", pool, uid, f"{uid}r")
    dev = api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]["data"]
    assert dev["source"] == f"{uid}r" and dev["pool"] == pool
    pdev = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"]["pdata"]
    assert pdev["source"] == f"{uid}r"
    assert api.get(url(pool, f"{uid}r")).json()["metadata"]["used_by"] == sorted(
        [f"/1.0/instances/{c1}", f"/1.0/profiles/{world.profile}"])
    # (the 5.0 client moves across pools as copy + delete, which the users refuse, as
    # LXD's; the API's move, POST {pool}, is the one that takes them along: corral's)
    wait_op(api, api.post(url(pool, f"{uid}r"), json={"name": uid, "pool": pools["dir"]}))
    dev = api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]["data"]
    assert (dev["pool"], dev["source"]) == (pools["dir"], uid)
    assert api.get(url(pool, f"{uid}r")).status_code == 404
    r = corral(stack, "storage", "volume", "move", f"{pools['dir']}/{uid}", f"{pool}/{uid}")
    assert r.returncode == 0, r.stderr
    dev = api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]["data"]
    assert (dev["pool"], dev["source"]) == (pool, uid)
    lxc(stack, "storage", "volume", "detach-profile", pool, uid, world.profile, "pdata")

    # a restore waits for the instances that use the volume to stop, as LXD
    (vol_path(stack, pool, uid) / "f").write_text("one")
    lxc(stack, "storage", "volume", "snapshot", pool, uid, "s0")
    (vol_path(stack, pool, uid) / "f").write_text("two")
    lxc(stack, "storage", "volume", "restore", pool, uid, "s0")  # c1 is stopped
    assert (vol_path(stack, pool, uid) / "f").read_text() == "one"
    world.state(c1, "start")
    r = lxc(stack, "storage", "volume", "restore", pool, uid, "s0", check=False)
    assert r.returncode != 0 and "running" in r.stderr, r.stderr
    r = api.post(url(pool, uid), json={"name": f"{uid}x"})
    assert r.status_code == 400 and "running" in r.json()["error"], r.text
    r = corral(stack, "storage", "volume", "move", f"{pool}/{uid}", f"{pools['dir']}/{uid}")
    assert r.returncode != 0 and "running" in r.stderr, r.stderr
    assert vol_path(stack, pool, uid).is_dir() and api.get(
        url(pools["dir"], uid)).status_code == 404
    world.state(c1, "stop", force=True)

    lxc(stack, "storage", "volume", "attach-profile", pool, uid, world.profile, "data",
        "/mnt/p")
    assert api.get(url(pool, uid)).json()["metadata"]["used_by"] == sorted(
        [f"/1.0/instances/{c1}", f"/1.0/profiles/{world.profile}"])
    lxc(stack, "storage", "volume", "detach-profile", pool, uid, world.profile, "data")
    lxc(stack, "storage", "volume", "detach", pool, uid, c1, "data")
    assert api.get(url(pool, uid)).json()["metadata"]["used_by"] == []
    lxc(stack, "storage", "volume", "delete", pool, uid)
    assert not vol_path(stack, pool, uid).exists()


# -- the corral CLI -----------------------------------------------------------------------

def test_corral_storage_volume_commands(stack, api, pools, world, uid):
    def ok(*args: str) -> str:
        r = corral(stack, "storage", "volume", *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    dp, bp = pools["dir"], pools["btrfs"]
    ok("create", bp, uid, "size=32MiB", "user.a=1", "--description", "cli")
    shown = yaml.safe_load(ok("show", bp, uid))
    assert shown["config"] == {"size": "32MiB", "user.a": "1"}
    assert shown["description"] == "cli"
    assert ok("get", bp, uid, "size").strip() == "32MiB"
    ok("set", bp, uid, "size", "48MiB")
    ok("set", bp, uid, "user.b=2")
    ok("unset", bp, uid, "user.a")
    assert api.get(url(bp, uid)).json()["metadata"]["config"] == {"size": "48MiB",
                                                                  "user.b": "2"}
    # stdin is not a TTY: the YAML is read from it
    r = subprocess.run([str(BIN / "corral"), "storage", "volume", "edit", bp, uid],
                       input="description: edited\n", env=stack.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert api.get(url(bp, uid)).json()["metadata"]["description"] == "edited"

    (vol_path(stack, bp, uid) / "f").write_text("one")
    ok("snapshot", bp, uid, "s0")
    (vol_path(stack, bp, uid) / "f").write_text("two")
    ok("restore", bp, uid, "s0")
    assert (vol_path(stack, bp, uid) / "f").read_text() == "one"
    ok("rename", bp, f"{uid}/s0", f"{uid}/s1")
    rows = json.loads(ok("list", bp, "--format", "json"))
    assert {f"{uid}/s1", uid} <= {v["name"] for v in rows}

    ok("copy", f"{bp}/{uid}", f"{dp}/{uid}c")
    assert (vol_path(stack, dp, f"{uid}c", "s1") / "f").read_text() == "one"
    ok("move", f"{dp}/{uid}c", f"{bp}/{uid}m")
    assert (vol_path(stack, bp, f"{uid}m") / "f").read_text() == "one"
    assert not vol_path(stack, dp, f"{uid}c").exists()
    ok("rename", bp, f"{uid}m", f"{uid}n")
    assert vol_path(stack, bp, f"{uid}n").is_dir()

    c1 = world.create("cli")
    ok("attach", bp, uid, c1, "/mnt/x")
    devs = api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]
    assert devs[uid] == {"type": "disk", "pool": bp, "source": uid, "path": "/mnt/x"}
    r = corral(stack, "storage", "volume", "delete", bp, uid)
    assert r.returncode != 0 and "in use" in r.stderr
    ok("detach", bp, uid, c1)
    assert uid not in api.get(f"/1.0/instances/{c1}").json()["metadata"]["devices"]

    tarball = stack.dir / f"{uid}.tar.xz"
    try:
        ok("export", bp, uid, str(tarball), "--compression", "xz")
        ok("import", dp, str(tarball), f"{uid}i")
    finally:
        tarball.unlink(missing_ok=True)
    assert (vol_path(stack, dp, f"{uid}i") / "f").read_text() == "one"
    assert (vol_path(stack, dp, f"{uid}i", "s1") / "f").read_text() == "one"
    assert api.get(url(bp, uid) + "/backups").json()["metadata"] == []
    ok("delete", dp, f"{uid}i")

    ok("delete", bp, f"{uid}/s1")
    assert not vol_path(stack, bp, uid, "s1").exists()
    for name in (uid, f"{uid}n"):
        ok("delete", bp, name)
    r = corral(stack, "storage", "volume", "show", bp, uid)
    assert r.returncode != 0 and "not found" in r.stderr.lower()


# -- events, and a delete that cannot check its users ---------------------------------------

async def test_lifecycle_events_and_503_when_users_cannot_be_checked(stack, aapi, bus, pools,
                                                                     uid):
    pool = pools["dir"]
    seen: list[dict] = []

    async def on_event(msg):
        meta = json.loads(msg.data)["metadata"]
        if f"/{uid}" in meta["source"]:
            seen.append(meta)

    sub = await bus.subscribe("corral.events.lifecycle.default.>", on_event)
    try:
        r = await aapi.post(url(pool), json={"name": uid})
        assert r.status_code == 200
        assert (await aapi.patch(url(pool, uid), json={"description": "d"})).status_code == 200
        r = await aapi.post(url(pool, uid) + "/snapshots", json={"name": "s0"})
        op = (await aapi.get(r.json()["operation"] + "/wait")).json()["metadata"]
        assert op["status"] == "Success", op
        assert (await aapi.post(url(pool, uid), json={"name": f"{uid}b"})).status_code == 200
        stack.stop("instance")
        try:
            r = await aapi.delete(url(pool, f"{uid}b"))
            assert r.status_code == 503 and "instance service" in r.json()["error"], r.text
            assert vol_path(stack, pool, f"{uid}b").is_dir()
            assert (await aapi.get(url(pool, f"{uid}b"))).status_code == 200
        finally:
            stack.start("instance")
            wait_for(stack.ready, 60, what="the instance service to answer again")
        assert (await aapi.delete(url(pool, f"{uid}b"))).status_code == 200
        for _ in range(50):
            if len(seen) >= 5:
                break
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    assert [e["action"] for e in seen] == [
        "storage-volume-created", "storage-volume-updated", "storage-volume-snapshot-created",
        "storage-volume-renamed", "storage-volume-deleted"]
    assert seen[0]["source"] == f"/1.0/storage-pools/{pool}/volumes/custom/{uid}"
    assert seen[2]["source"].endswith(f"/custom/{uid}/snapshots/s0")
    assert seen[3]["context"] == {"old_name": uid}


# -- export and import --------------------------------------------------------------------

REFERENCE = Path("/work/shared/reference/lxd-5.0/exports/lxd-export-volume-refvol.tar.gz")


@pytest.mark.parametrize("src,dst", [("btrfs", "dir"), ("dir", "btrfs")])
def test_export_and_import_through_the_stock_client(stack, api, pools, uid, tmp_path,
                                                    src, dst):
    sp, dp = pools[src], pools[dst]
    lxc(stack, "storage", "volume", "create", sp, uid, "user.k=v")
    (vol_path(stack, sp, uid) / "f").write_text("old")
    os.symlink("f", vol_path(stack, sp, uid) / "link")
    lxc(stack, "storage", "volume", "snapshot", sp, uid, "s0")
    (vol_path(stack, sp, uid) / "f").write_text("new")
    tarball = tmp_path / "vol.tar.gz"
    lxc(stack, "storage", "volume", "export", sp, uid, str(tarball))
    assert api.get(url(sp, uid) + "/backups").json()["metadata"] == []  # lxc deletes it
    import tarfile
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        index = yaml.safe_load(tar.extractfile("backup/index.yaml").read())
    assert {"backup/volume/f", "backup/volume-snapshots/s0/f"} <= set(names)
    assert index["type"] == "custom" and index["snapshots"] == ["s0"]
    assert index["config"]["volume"]["config"] == {"user.k": "v"}

    lxc(stack, "storage", "volume", "import", dp, str(tarball), f"{uid}i")
    assert (vol_path(stack, dp, f"{uid}i") / "f").read_text() == "new"
    assert os.readlink(vol_path(stack, dp, f"{uid}i") / "link") == "f"
    assert (vol_path(stack, dp, f"{uid}i", "s0") / "f").read_text() == "old"
    shown = api.get(url(dp, f"{uid}i")).json()["metadata"]
    assert shown["config"] == {"user.k": "v"}
    lxc(stack, "storage", "volume", "restore", dp, f"{uid}i", "s0")
    assert (vol_path(stack, dp, f"{uid}i") / "f").read_text() == "old"
    r = lxc(stack, "storage", "volume", "import", dp, str(tarball), f"{uid}i", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    if src == "btrfs":  # btrfs send streams: into a btrfs pool only
        opt = tmp_path / "opt.tar.gz"
        lxc(stack, "storage", "volume", "export", sp, uid, str(opt), "--optimized-storage")
        with tarfile.open(opt) as tar:
            assert {"backup/volume.bin", "backup/volume-snapshots/s0.bin"} <= set(
                tar.getnames())
        lxc(stack, "storage", "volume", "import", sp, str(opt), f"{uid}o")
        assert (vol_path(stack, sp, f"{uid}o") / "f").read_text() == "new"
        assert (vol_path(stack, sp, f"{uid}o", "s0") / "f").read_text() == "old"
        lxc(stack, "storage", "volume", "delete", sp, f"{uid}o")
        r = lxc(stack, "storage", "volume", "import", dp, str(opt), f"{uid}o", check=False)
        assert r.returncode != 0 and "btrfs" in r.stderr
        assert api.get(url(dp, f"{uid}o")).status_code == 404
    for pool, name in [(sp, uid), (dp, f"{uid}i")]:
        lxc(stack, "storage", "volume", "delete", pool, name)


def test_backups_api_and_lxd_reference_import(stack, api, pools, uid, tmp_path):
    pool = pools["btrfs"]
    r = api.post(url(pool), content=REFERENCE.read_bytes(), headers={
        "Content-Type": "application/octet-stream", "X-LXD-name": uid})
    wait_op(api, r)
    shown = api.get(url(pool, uid)).json()["metadata"]
    assert shown["config"] == {"size": "64MiB"} and shown["content_type"] == "filesystem"
    snaps = api.get(url(pool, uid) + "/snapshots", params={"recursion": 1}).json()["metadata"]
    assert [s["name"] for s in snaps] == ["s0"]
    assert vol_path(stack, pool, uid, "s0").is_dir()

    # a backup kept on the server: list, rename, export, delete
    r = api.post(url(pool, uid) + "/backups", json={"name": "b0", "volume_only": True,
                                                   "compression_algorithm": "xz"})
    op = wait_op(api, r)
    assert op["resources"]["backups"] == ["b0"]
    got = api.get(url(pool, uid) + "/backups", params={"recursion": 1}).json()["metadata"]
    assert [(b["name"], b["volume_only"]) for b in got] == [("b0", True)]
    wait_op(api, api.post(url(pool, uid) + "/backups/b0", json={"name": "b1"}))
    assert api.get(url(pool, uid) + "/backups/b0").status_code == 404
    data = api.get(url(pool, uid) + "/backups/b1/export").content
    import io
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
        assert not any(n.startswith("backup/volume-snapshots/") for n in tar.getnames())
    assert api.post(url(pool, uid) + "/backups", json={"name": "b1"}).status_code == 409
    r = api.post(url(pools["dir"]), content=REFERENCE.read_bytes(), headers={
        "Content-Type": "application/octet-stream", "X-LXD-name": uid})
    wait_op(api, r)  # into dir: the data and snapshot come, not the size (no quotas)
    assert api.get(url(pools["dir"], uid)).json()["metadata"]["config"] == {}
    r = api.post(url(pools["dir"], uid) + "/backups", json={"optimized_storage": True})
    assert r.status_code == 400 and "btrfs" in r.json()["error"]
    api.delete(url(pools["dir"], uid))
    wait_op(api, api.delete(url(pool, uid) + "/backups/b1"))
    assert api.get(url(pool, uid) + "/backups").json()["metadata"] == []
    # an expired backup is pruned, with its frozen copy
    wait_op(api, api.post(url(pool, uid) + "/backups",
                          json={"name": "old", "expires_at": "2001-01-01T00:00:00Z"}))
    wait_for(lambda: api.get(url(pool, uid) + "/backups/old").status_code == 404, 30,
             what="the expired backup to be pruned")
    frozen = stack.dir / "storage-pools" / pool / ".corral-backups" / "custom" / uid
    assert not (frozen / "old").exists()

    # bad uploads: nothing made
    for content in (b"", b"not a tarball"):
        r = api.post(url(pool), content=content, headers={
            "Content-Type": "application/octet-stream", "X-LXD-name": f"{uid}bad"})
        if r.status_code == 202:
            assert wait_op(api, r, ok=False)["status"] == "Failure"
        else:
            assert r.status_code == 400, r.text
    assert api.get(url(pool, f"{uid}bad")).status_code == 404
    assert not vol_path(stack, pool, f"{uid}bad").exists()
    api.delete(url(pool, uid))


def test_a_volume_found_on_disk_without_a_record_is_usable(stack, api, pools, uid):
    """The host is the truth: a custom volume made by hand (or left after a KV loss) is
    listed, shown, changed and deleted like any other."""
    pool = pools["dir"]
    vol_path(stack, pool, uid).mkdir(mode=0o711)
    (vol_path(stack, pool, uid) / "f").write_text("x")
    listed = json.loads(lxc(stack, "storage", "volume", "list", pool, "--format",
                            "json").stdout)
    assert uid in {v["name"] for v in listed}
    assert api.get(url(pool, uid)).json()["metadata"]["content_type"] == "filesystem"
    lxc(stack, "storage", "volume", "set", pool, uid, "user.found=yes")
    assert api.get(url(pool, uid)).json()["metadata"]["config"] == {"user.found": "yes"}
    lxc(stack, "storage", "volume", "delete", pool, uid)
    assert not vol_path(stack, pool, uid).exists()
    assert api.get(url(pool, uid)).status_code == 404


def test_storage_start_sweeps_frozen_backups_no_record_names(stack, api, pools, uid):
    """A storage service killed between freezing a backup and recording it leaves frozen
    copies; its next start removes them (old enough not to be a backup in the making)."""
    pool = pools["btrfs"]
    create(api, pool, uid)
    wait_op(api, api.post(url(pool, uid) + "/backups", json={"name": "kept"}))
    top = stack.dir / "storage-pools" / pool / ".corral-backups" / "custom" / uid
    stray = top / "stray"
    (stray / "volume").mkdir(parents=True)
    (stray / "volume" / "f").write_text("x")
    os.utime(stray, (1, 1))
    stack.stop("storage")
    stack.start("storage")
    wait_for(stack.ready, 60, what="the storage service to answer again")
    wait_for(lambda: not stray.exists(), 30, what="the stray frozen copy to go")
    assert (top / "kept").is_dir()
    assert [b["name"] for b in api.get(url(pool, uid) + "/backups", params={
        "recursion": 1}).json()["metadata"]] == ["kept"]
    api.delete(url(pool, uid))
    assert not top.exists() or not (top / "kept").exists()


async def test_concurrent_snapshots_keep_every_record(stack, aapi, pools, uid):
    """Snapshots taken at once on one volume are all made and all described (the record
    is rewritten by one writer at a time: no lost update)."""
    pool = pools["btrfs"]
    r = await aapi.post(url(pool), json={"name": uid})
    assert r.status_code == 200, r.text
    names = [f"c{i}" for i in range(6)]
    ops = await asyncio.gather(*(aapi.post(url(pool, uid) + "/snapshots",
                                           json={"name": n, "expires_at":
                                                 "2040-01-01T00:00:00Z"}) for n in names))
    for r in ops:
        assert r.status_code == 202, r.text
        op = (await aapi.get(r.json()["operation"] + "/wait",
                             params={"timeout": 60})).json()["metadata"]
        assert op["status"] == "Success", op
    snaps = (await aapi.get(url(pool, uid) + "/snapshots",
                            params={"recursion": 1})).json()["metadata"]
    assert sorted(s["name"] for s in snaps) == names
    assert {s["expires_at"][:10] for s in snaps} == {"2040-01-01"}
    assert (await aapi.delete(url(pool, uid))).status_code == 200


# -- last: the schedule had the whole module to fire ---------------------------------------


def test_scheduled_snapshots(stack, api, scheduled_volume):
    """snapshots.schedule (cron): a snapshot each time it is due, named by
    snapshots.pattern, expiring by snapshots.expiry. The volume was made at the module's
    start (``scheduled_volume``): the minute may have come while the other tests ran. If
    not, the storage service is started again with its schedule clock shifted
    (CORRAL_SNAPSHOT_SCHEDULE_SHIFT) so the next minute comes in seconds, not up to 60,
    and started again without the shift once the real pass fired."""
    pool, name = scheduled_volume
    r = api.patch(url(pool, name), json={"config": {"snapshots.schedule": "sometimes"}})
    assert r.status_code == 400 and "schedule" in r.json()["error"]

    def taken() -> bool:
        return api.get(url(pool, name) + "/snapshots/auto0").status_code == 200

    shifted = not taken()
    try:
        if shifted:
            shift = -(time.time() + 8) % 60  # the shifted clock's minute ends 8 s from now
            restart(stack, "storage", CORRAL_SNAPSHOT_SCHEDULE_SHIFT=f"{shift:.3f}")
        wait_for(taken, 90, what="the scheduled snapshot")
    finally:
        if shifted:
            restart(stack, "storage")
    snap = api.get(url(pool, name) + "/snapshots/auto0").json()["metadata"]
    expires = datetime.fromisoformat(snap["expires_at"][:19] + "+00:00")
    assert abs(expires - datetime.now(timezone.utc) - timedelta(days=1)) < timedelta(hours=1)
    assert vol_path(stack, pool, name, "auto0").is_dir()
