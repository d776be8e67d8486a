"""The storage service through the gateway, the bus, the `corral` CLI and the stock `lxc`.

Real btrfs loop pools and dir pools in the session's $CORRAL_DIR, each named with the
test's ``uid``; the ``pools`` fixture deletes them (volumes first) and, should that fail,
unmounts, detaches and removes them by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import nats.js.errors as jse
import pytest
import yaml

from services.storage.drivers.btrfs_util import subvolume_id
from services.storage.drivers.util import is_mounted, loop_devices_for
from shared import blobs, codec
from shared.errors import Conflict, NotFound
from shared.messages.storage import ImageVolumeDeleteReply, VolumePathReply
from shared.models import Reply
from shared.state import key

from .stack import BIN, wait_for
from .world import lxc_conf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs btrfs-progs"),
]

SMALL = "256MiB"


# -- helpers ------------------------------------------------------------------------------

def pool_path(stack, name: str) -> Path:
    return stack.dir / "storage-pools" / name


def loop_file(stack, name: str) -> Path:
    return stack.dir / "disks" / f"{name}.img"


def force_remove(stack, name: str) -> None:
    """Kernel-level cleanup for a pool the API could not delete."""
    path = pool_path(stack, name)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        mounts = [line.split()[4] for line in fh]
    for mp in sorted((m for m in mounts if m == str(path) or m.startswith(f"{path}/")),
                     key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    img = loop_file(stack, name)
    if img.exists():
        for dev in loop_devices_for(img):
            subprocess.run(["losetup", "-d", dev], check=False)
        img.unlink()
    shutil.rmtree(path, ignore_errors=True)


async def node_ask(bus, verb: str, body: dict, timeout: float = 60) -> Reply:
    return await bus.request("storage", verb, body, node=bus.config.node, timeout=timeout)


async def kv_has(bus, bucket: str, k: str) -> bool:
    kv = await bus.js.key_value(bucket)
    try:
        entry = await kv.get(k)
    except (jse.KeyNotFoundError, jse.KeyDeletedError):
        return False
    return entry.value is not None


def corral(stack, *args):
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=120)


def lxc(stack, tmp_path, *args):
    env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(tmp_path / "lxc-conf")}
    return subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=120)


def restart_storage(stack, api) -> None:
    stack.stop("storage")
    stack.start("storage")
    wait_for(lambda: api.get("/1.0/storage-pools").status_code == 200, 30,
             what="the storage service to answer again")


@pytest.fixture
async def pools(stack, aapi, bus):
    """Names appended here are deleted at the end, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        r = await aapi.get(f"/1.0/storage-pools/{name}/volumes", params={"recursion": 1,
                                                                        "all-projects": "true"})
        for v in r.json()["metadata"] or [] if r.status_code == 200 else []:
            if v["type"] != "image":
                try:
                    await node_ask(bus, "volume_delete", {"pool": name, "kind": v["type"],
                                                          "name": v["name"],
                                                          "project": v["project"]})
                except Exception:
                    pass
        r = await aapi.delete(f"/1.0/storage-pools/{name}")
        if r.status_code not in (200, 404) or pool_path(stack, name).exists():
            force_remove(stack, name)


# -- pools over HTTP ----------------------------------------------------------------------

async def test_btrfs_pool_lifecycle(stack, aapi, pools, uid):
    pools.append(uid)
    r = await aapi.post("/1.0/storage-pools", json={"name": uid, "driver": "btrfs",
                                                    "config": {"size": SMALL},
                                                    "description": "test pool"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "sync"
    assert is_mounted(pool_path(stack, uid)) and loop_file(stack, uid).is_file()

    urls = (await aapi.get("/1.0/storage-pools")).json()["metadata"]
    assert f"/1.0/storage-pools/{uid}" in urls
    objs = (await aapi.get("/1.0/storage-pools", params={"recursion": 1})).json()["metadata"]
    assert [p for p in objs if p["name"] == uid][0]["driver"] == "btrfs"

    r = await aapi.get(f"/1.0/storage-pools/{uid}")
    pool = r.json()["metadata"]
    assert set(pool) == {"name", "driver", "description", "config", "status", "locations",
                         "used_by"}
    assert pool["status"] == "Created" and pool["locations"] == ["none"]
    assert pool["config"]["source"] == str(loop_file(stack, uid))
    assert pool["config"]["size"] == SMALL and pool["description"] == "test pool"
    etag = r.headers["ETag"]

    res = (await aapi.get(f"/1.0/storage-pools/{uid}/resources")).json()["metadata"]
    assert 0 < res["space"]["used"] < res["space"]["total"] <= 256 * 2**20

    r = await aapi.patch(f"/1.0/storage-pools/{uid}", json={"description": "changed"},
                         headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    r = await aapi.put(f"/1.0/storage-pools/{uid}", json={"config": {"source": "/elsewhere"}})
    assert r.status_code == 400 and "cannot be changed" in r.json()["error"]
    r = await aapi.patch(f"/1.0/storage-pools/{uid}", json={"config": {"size": "200MiB"}})
    assert r.status_code == 400 and "shrink" in r.json()["error"]
    r = await aapi.patch(f"/1.0/storage-pools/{uid}", json={"config": {"bogus.key": "1"}})
    assert r.status_code == 400 and "bogus.key" in r.json()["error"]
    r = await aapi.patch(f"/1.0/storage-pools/{uid}", json={"config": {"size": "384MiB"}})
    assert r.status_code == 200, r.text
    res2 = (await aapi.get(f"/1.0/storage-pools/{uid}/resources")).json()["metadata"]
    assert res2["space"]["total"] > res["space"]["total"]
    pool = (await aapi.get(f"/1.0/storage-pools/{uid}")).json()["metadata"]
    assert pool["description"] == "changed" and pool["config"]["size"] == "384MiB"

    r = await aapi.delete(f"/1.0/storage-pools/{uid}")
    assert r.status_code == 200, r.text
    assert not loop_file(stack, uid).exists() and not pool_path(stack, uid).exists()
    assert (await aapi.get(f"/1.0/storage-pools/{uid}")).status_code == 404


async def test_dir_pool_and_duplicate(stack, aapi, pools, uid):
    pools.append(uid)
    body = {"name": uid, "driver": "dir"}
    assert (await aapi.post("/1.0/storage-pools", json=body)).status_code == 200
    r = await aapi.post("/1.0/storage-pools", json=body)
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    pool = (await aapi.get(f"/1.0/storage-pools/{uid}")).json()["metadata"]
    assert pool["driver"] == "dir" and pool["config"]["source"] == str(pool_path(stack, uid))
    assert (pool_path(stack, uid) / "containers").is_dir()
    res = (await aapi.get(f"/1.0/storage-pools/{uid}/resources")).json()["metadata"]
    assert res["space"]["total"] > 0
    vols = (await aapi.get(f"/1.0/storage-pools/{uid}/volumes")).json()["metadata"]
    assert vols == []
    assert (await aapi.delete(f"/1.0/storage-pools/{uid}")).status_code == 200
    assert not pool_path(stack, uid).exists()


@pytest.mark.parametrize("body, words", [
    ({"driver": "btrfs", "config": {"size": "1MiB"}}, "at least 128MiB"),
    ({"driver": "btrfs", "config": {"bogus": "1"}}, "bogus"),
    ({"driver": "zfs"}, "Unknown storage driver"),
    ({"driver": ""}, "No storage driver"),
    ({"driver": "dir", "config": {"source": "relative/path"}}, "absolute path"),
    ({"driver": "dir", "suffix": "/x"}, "slash"),
    ({"driver": "dir", "suffix": " x"}, "spaces"),
])
async def test_bad_create_is_400_and_leaves_nothing(stack, aapi, bus, pools, uid, body,
                                                    words):
    pools.append(uid)
    name = uid + body.pop("suffix", "")
    r = await aapi.post("/1.0/storage-pools", json={"name": name, **body})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert not list((stack.dir / "disks").glob(f"{uid}*")) if (stack.dir / "disks").exists() \
        else True
    assert not list((stack.dir / "storage-pools").glob(f"{uid}*")) \
        if (stack.dir / "storage-pools").exists() else True
    assert not await kv_has(bus, "storage_pools", key(name))
    assert (await aapi.get(f"/1.0/storage-pools/{uid}")).status_code == 404


async def test_pool_delete_refused_while_a_profile_uses_it(aapi, pools, uid):
    pools.append(uid)
    assert (await aapi.post("/1.0/storage-pools",
                            json={"name": uid, "driver": "dir"})).status_code == 200
    profile = {"name": uid, "devices": {"root": {"type": "disk", "path": "/", "pool": uid}}}
    assert (await aapi.post("/1.0/profiles", json=profile)).status_code == 200
    try:
        pool = (await aapi.get(f"/1.0/storage-pools/{uid}")).json()["metadata"]
        assert pool["used_by"] == [f"/1.0/profiles/{uid}"]
        r = await aapi.delete(f"/1.0/storage-pools/{uid}")
        assert r.status_code == 409 and f"/1.0/profiles/{uid}" in r.json()["error"]
    finally:
        await aapi.delete(f"/1.0/profiles/{uid}")
    assert (await aapi.delete(f"/1.0/storage-pools/{uid}")).status_code == 200


async def test_events_and_503_when_profiles_cannot_be_checked(stack, aapi, bus, pools, uid):
    pools.append(uid)
    seen: list[dict] = []

    async def on_event(msg):
        seen.append(json.loads(msg.data)["metadata"])

    sub = await bus.subscribe("corral.events.lifecycle.default.storage-pool", on_event)
    try:
        assert (await aapi.post("/1.0/storage-pools",
                                json={"name": uid, "driver": "dir"})).status_code == 200
        assert (await aapi.patch(f"/1.0/storage-pools/{uid}",
                                 json={"description": "d"})).status_code == 200
        stack.stop("instance")
        try:
            r = await aapi.delete(f"/1.0/storage-pools/{uid}")
            assert r.status_code == 503 and "not deleting it" in r.json()["error"]
            assert pool_path(stack, uid).is_dir()
            r = await aapi.get(f"/1.0/storage-pools/{uid}")  # listing still works
            assert r.status_code == 200
        finally:
            stack.start("instance")
            for _ in range(150):
                if (await aapi.get("/1.0/profiles")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
        assert (await aapi.delete(f"/1.0/storage-pools/{uid}")).status_code == 200
        for _ in range(50):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    assert [e["action"] for e in seen] == ["storage-pool-created", "storage-pool-updated",
                                           "storage-pool-deleted"]
    assert {e["source"] for e in seen} == {f"/1.0/storage-pools/{uid}"}


def test_server_info_reports_storage(api):
    meta = api.get("/1.0").json()["metadata"]
    assert {"storage", "resources"} <= set(meta["api_extensions"])
    drivers = {d["Name"]: d for d in meta["environment"]["storage_supported_drivers"]}
    assert {"btrfs", "dir"} <= set(drivers) and drivers["btrfs"]["Remote"] is False


# -- CLI and the stock client -------------------------------------------------------------

def test_corral_storage_cli(stack, pools, uid):
    pools.append(uid)
    r = corral(stack, "storage", "create", uid, "btrfs", f"size={SMALL}")
    assert r.returncode == 0, r.stderr
    r = corral(stack, "storage", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert uid in [p["name"] for p in json.loads(r.stdout)]
    r = corral(stack, "storage", "list", "--format", "csv")
    assert f"{uid},btrfs," in r.stdout
    r = corral(stack, "storage", "show", uid)
    assert yaml.safe_load(r.stdout)["driver"] == "btrfs"
    r = corral(stack, "storage", "info", uid)
    assert r.returncode == 0, r.stderr
    assert "MiB" in yaml.safe_load(r.stdout)["info"]["total space"]
    r = corral(stack, "storage", "volume", "list", uid, "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = corral(stack, "storage", "create", uid, "btrfs")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "already exists" in r.stderr
    r = corral(stack, "storage", "create", uid + "x", "nope")
    assert r.returncode == 1 and "Unknown storage driver" in r.stderr
    r = corral(stack, "storage", "delete", uid)
    assert r.returncode == 0, r.stderr
    assert not pool_path(stack, uid).exists()


def test_stock_lxc_client(stack, pools, uid, tmp_path):
    if shutil.which("lxc") is None:
        pytest.skip("Debian lxd-client is not installed")
    pools.append(uid)
    r = lxc(stack, tmp_path, "storage", "create", uid, "btrfs", f"size={SMALL}")
    assert r.returncode == 0, r.stderr
    assert f"Storage pool {uid} created" in r.stdout
    r = lxc(stack, tmp_path, "storage", "list", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert f"{uid},btrfs,{loop_file(stack, uid)},,0,CREATED" in r.stdout
    r = lxc(stack, tmp_path, "storage", "show", uid)
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["driver"] == "btrfs" and shown["config"]["size"] == SMALL
    r = lxc(stack, tmp_path, "storage", "info", uid)
    assert r.returncode == 0, r.stderr
    assert "total space" in r.stdout and "MiB" in r.stdout
    r = lxc(stack, tmp_path, "storage", "set", uid, "btrfs.mount_options",
            "user_subvol_rm_allowed,noatime")
    assert r.returncode == 0, r.stderr
    assert "noatime" in next(line for line in open("/proc/self/mountinfo")
                             if line.split()[4] == str(pool_path(stack, uid)))
    r = lxc(stack, tmp_path, "storage", "volume", "list", uid)
    assert r.returncode == 0, r.stderr
    r = lxc(stack, tmp_path, "storage", "delete", uid)
    assert r.returncode == 0, r.stderr
    assert not loop_file(stack, uid).exists()
    r = lxc(stack, tmp_path, "storage", "create", uid, "nope")
    assert r.returncode != 0 and "Unknown storage driver" in r.stderr


# -- restarts -----------------------------------------------------------------------------

def _create(api, name: str) -> None:
    r = api.post("/1.0/storage-pools", json={"name": name, "driver": "btrfs",
                                             "config": {"size": SMALL}})
    assert r.status_code == 200, r.text


def test_restart_keeps_pools_and_reattaches_loops(stack, api, pools, uid):
    pools.append(uid)
    _create(api, uid)
    path, img = pool_path(stack, uid), loop_file(stack, uid)
    (path / "custom" / "marker").write_text("kept")
    restart_storage(stack, api)
    assert is_mounted(path)
    assert f"/1.0/storage-pools/{uid}" in api.get("/1.0/storage-pools").json()["metadata"]

    stack.stop("storage")
    subprocess.run(["umount", str(path)], check=True)  # the loop device goes with it
    assert not is_mounted(path) and not loop_devices_for(img)
    stack.start("storage")
    wait_for(lambda: api.get(f"/1.0/storage-pools/{uid}").status_code == 200, 30,
             what="the storage service")
    assert is_mounted(path) and loop_devices_for(img)
    assert (path / "custom" / "marker").read_text() == "kept"
    assert api.get(f"/1.0/storage-pools/{uid}").json()["metadata"]["status"] == "Created"


def test_unmountable_pool_is_unavailable_until_repaired(stack, api, pools, uid):
    pools.append(uid)
    _create(api, uid)
    path, img = pool_path(stack, uid), loop_file(stack, uid)
    aside = img.with_name(img.name + ".aside")
    stack.stop("storage")
    try:
        subprocess.run(["umount", str(path)], check=True)
        img.rename(aside)
        restart_storage(stack, api)
        pool = api.get(f"/1.0/storage-pools/{uid}").json()["metadata"]
        assert pool["status"] == "Unavailable"
        r = api.get(f"/1.0/storage-pools/{uid}/resources")
        assert r.status_code == 503 and "missing" in r.json()["error"]
    finally:
        if aside.exists():
            aside.rename(img)
    r = api.get(f"/1.0/storage-pools/{uid}/resources")  # any use mounts it again
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/storage-pools/{uid}").json()["metadata"]["status"] == "Created"
    assert is_mounted(path)


# -- volumes over the bus -----------------------------------------------------------------

@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory):
    from shared.image.build import build_busybox
    from shared.image.format import inspect_unified

    path = build_busybox(tmp_path_factory.mktemp("crtimg"))
    return path, inspect_unified(path).fingerprint


@pytest.fixture
async def image_blobs(stack, bus, busybox_image, uid):
    """Stand in for the image service's ``image.blob``: the busybox image in the
    ``images`` object store, answered by a responder of our own."""
    path, fp = busybox_image
    store = await blobs.bucket(bus, "images")
    obj = f"{uid}-{fp}"
    await blobs.put_file(store, obj, path)
    stack.stop("image")

    async def on_blob(msg):
        asked = codec.decode(msg.data)["fingerprint"]
        if asked == fp:
            reply = Reply(metadata={"bucket": "images", "objects": {"meta": obj, "rootfs": None},
                                    "type": "container"})
            await msg.respond(codec.encode(reply))
        else:
            await bus.nc.publish(msg.reply, b"", headers={
                "Nats-Service-Error-Code": "404", "Nats-Service-Error": "Image not found"})

    sub = await bus.subscribe("corral.image.blob", on_blob)
    try:
        yield fp
    finally:
        await sub.unsubscribe()
        await blobs.delete(store, obj)
        stack.start("image")
        for _ in range(100):
            try:
                await bus.request("image", "info", {}, timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.2)


def _unpacked(stack, pool: str, fp: str) -> int:
    lines = stack.log_path("storage").read_text().splitlines()
    return sum(1 for line in lines if '"image unpacked"' in line
               and json.loads(line).get("pool") == pool and json.loads(line).get("fingerprint")
               == fp)


async def test_volumes_from_image(stack, aapi, bus, pools, uid, image_blobs):
    fp = image_blobs
    pools.append(uid)
    r = await aapi.post("/1.0/storage-pools", json={"name": uid, "driver": "btrfs",
                                                    "config": {"size": SMALL}})
    assert r.status_code == 200, r.text
    names = [f"{uid}c{i}" for i in range(3)]
    replies = await asyncio.gather(*(node_ask(bus, "volume_from_image", {
        "pool": uid, "kind": "container", "name": n, "fingerprint": fp}) for n in names))
    for n, reply in zip(names, replies, strict=True):
        path = Path(VolumePathReply.model_validate(reply.metadata).path)
        assert path == pool_path(stack, uid) / "containers" / n
        assert (path / "rootfs" / "bin" / "busybox").exists()
    image_vol = pool_path(stack, uid) / "images" / fp
    first = subvolume_id(image_vol)
    await node_ask(bus, "volume_from_image", {"pool": uid, "name": f"{uid}c9",
                                              "fingerprint": fp, "project": "p1"})
    assert subvolume_id(image_vol) == first
    assert (pool_path(stack, uid) / "containers" / f"p1_{uid}c9").is_dir()
    assert _unpacked(stack, uid, fp) == 1

    with pytest.raises(Conflict):  # the same instance volume twice
        await node_ask(bus, "volume_from_image", {"pool": uid, "name": names[0],
                                                  "fingerprint": fp})
    unknown = "0" * 64
    with pytest.raises(NotFound):  # the image service does not know it: nothing left
        await node_ask(bus, "volume_from_image", {"pool": uid, "name": f"{uid}x",
                                                  "fingerprint": unknown})
    assert not (pool_path(stack, uid) / "containers" / f"{uid}x").exists()
    assert not (pool_path(stack, uid) / "images" / unknown).exists()
    assert not await kv_has(bus, "storage_volumes", key(uid, "container", "default", f"{uid}x"))

    vols = (await aapi.get(f"/1.0/storage-pools/{uid}/volumes",
                           params={"recursion": 1})).json()["metadata"]
    by_name = {v["name"]: v for v in vols}
    assert set(names) | {fp} <= set(by_name) and f"{uid}c9" not in by_name  # other project
    assert by_name[names[0]]["used_by"] == [f"/1.0/instances/{names[0]}"]
    assert by_name[names[0]]["content_type"] == "filesystem"
    assert by_name[fp]["type"] == "image"
    urls = (await aapi.get(f"/1.0/storage-pools/{uid}/volumes/container")).json()["metadata"]
    assert f"/1.0/storage-pools/{uid}/volumes/container/{names[1]}" in urls
    vol = (await aapi.get(f"/1.0/storage-pools/{uid}/volumes/container/{names[1]}")).json()
    assert vol["metadata"]["name"] == names[1]

    r = await aapi.delete(f"/1.0/storage-pools/{uid}")
    assert r.status_code == 409 and names[0] in r.json()["error"]

    got = await node_ask(bus, "volume_path", {"pool": uid, "name": names[2]})
    assert VolumePathReply.model_validate(got.metadata).exists
    renamed = f"{uid}r"
    await node_ask(bus, "volume_rename", {"pool": uid, "name": names[2], "new_name": renamed})
    assert (pool_path(stack, uid) / "containers" / renamed).is_dir()
    got = await node_ask(bus, "volume_path", {"pool": uid, "name": names[2]})
    assert not VolumePathReply.model_validate(got.metadata).exists

    # btrfs snapshots stand alone: the image volume goes, instance volumes stay
    got = await node_ask(bus, "image_volume_delete", {"fingerprint": fp})
    assert uid in ImageVolumeDeleteReply.model_validate(got.metadata).pools
    assert not image_vol.exists() and (pool_path(stack, uid) / "containers" / renamed).is_dir()

    for n, project in [(names[0], "default"), (names[1], "default"), (renamed, "default"),
                       (f"{uid}c9", "p1")]:
        await node_ask(bus, "volume_delete", {"pool": uid, "name": n, "project": project})
    with pytest.raises(NotFound):
        await node_ask(bus, "volume_delete", {"pool": uid, "name": names[0]})
    await node_ask(bus, "volume_from_image", {"pool": uid, "name": names[0],
                                              "fingerprint": fp})
    await node_ask(bus, "volume_delete", {"pool": uid, "name": names[0]})
    r = await aapi.delete(f"/1.0/storage-pools/{uid}")  # only an image volume is left
    assert r.status_code == 200, r.text
    assert not await kv_has(bus, "storage_volumes", key(uid, "image", "default", fp))
