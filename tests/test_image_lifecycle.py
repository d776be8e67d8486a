"""The life of pulled images (issue 11): ``lxc image refresh``, the periodic auto update,
the expiry of cached images, and the images.* server config keys.

On a private stack (its own nats-server and services, the image task every second): the
tests write image records behind the image service's back (a last use long ago, a last
check long ago) and restart it so it reads them, which the session's shared stack must
never see. The images come from a simplestreams tree served over HTTPS on loopback
(tests/simplestreams.py), through the stock ``lxc`` client with the server's certificate
pinned in a private LXD_CONF.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any, Callable

import httpx
import nats
import pytest

from shared import codec
from shared.state import key

from .simplestreams import StreamServer, lxc_remote_env
from .stack import Stack, private_stack, socket_client, wait_for
from .test_faults import restart
from .world import make_world, wait_op

pytestmark = pytest.mark.root
if os.geteuid() != 0 or shutil.which("lxc") is None or shutil.which("mksquashfs") is None:
    pytest.skip("needs root, Debian's lxd-client and squashfs-tools", allow_module_level=True)

V1, V2, V3 = "20260101_0000", "20260102_0000", "20260103_0000"
PRODUCT = "lifebox/1.36"


@pytest.fixture(scope="module")
def lstack(request):
    with private_stack(request, "imagelife", CORRAL_IMAGE_TASK_INTERVAL="1") as s:
        yield s


@pytest.fixture(scope="module")
def lapi(lstack):
    with socket_client(lstack, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def world(lstack, lapi, busybox_tarball):
    with make_world(lapi, lstack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


@pytest.fixture(scope="module")
def streams(tmp_path_factory, busybox_tarball):
    srv = StreamServer(tmp_path_factory.mktemp("life") / "tree", busybox_tarball,
                       os_name="lifebox")
    for variant in ("default", "auto", "exp", "fresh"):
        srv.add_version(V1, variant=variant, rootfs=("squashfs",))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def lxc_env(lstack, streams, tmp_path_factory) -> dict[str, str]:
    conf = tmp_path_factory.mktemp("lxc-conf")
    return {**lstack.env, "LXD_DIR": str(lstack.dir),
            **lxc_remote_env(conf, "ss", streams)}


def lxc(env: dict[str, str], *args: str, check: bool = True):
    import subprocess

    r = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def fp_of(streams: StreamServer, serial: str, variant: str = "default") -> str:
    return streams.fingerprints[serial if variant == "default"
                                else f"{variant}/{serial}"]["squashfs"]


def images(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {i["fingerprint"]: i for i in api.get("/1.0/images",
                                                 params={"recursion": 1}).json()["metadata"]}


def alias_target(api: httpx.Client, name: str) -> str | None:
    r = api.get(f"/1.0/images/aliases/{name}")
    return r.json()["metadata"]["target"] if r.status_code == 200 else None


def delete_image(api: httpx.Client, fp: str) -> None:
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        wait_op(api, r, ok=False)


async def _kv_change(url: str, creds: dict[str, str], bucket: str, k: str,
                     fn: Callable[[dict], dict]) -> None:
    nc = await nats.connect(url, **creds)
    try:
        kv = await nc.jetstream().key_value(bucket)
        entry = await kv.get(k)
        await kv.update(k, codec.encode(fn(codec.decode(entry.value))), last=entry.revision)
    finally:
        await nc.close()


def change_image_record(stack: Stack, fp: str, **fields: Any) -> None:
    """Rewrite an image's KV record as an admin would (then restart the image service:
    its cache reads the bucket at start)."""
    asyncio.run(_kv_change(stack.nats.url, stack.nats.connect_options(), "images",
                           key("default", fp), lambda r: {**r, **fields}))


# -- config keys -------------------------------------------------------------------------


@pytest.mark.parametrize("k,bad", [("images.remote_cache_expiry", "-1"),
                                   ("images.auto_update_interval", "6h"),
                                   ("images.auto_update_cached", "perhaps")])
def test_bad_image_config_values_are_400(lapi, lxc_env, k, bad):
    r = lapi.patch("/1.0", json={"config": {k: bad}})
    assert r.status_code == 400 and k in r.json()["error"], r.text
    r = lxc(lxc_env, "config", "set", "--", k, bad, check=False)
    assert r.returncode != 0 and k in r.stderr
    assert k not in lapi.get("/1.0").json()["metadata"]["config"]


def test_image_config_keys_set_and_unset(lapi, lxc_env):
    lxc(lxc_env, "config", "set", "images.auto_update_interval", "12")
    lxc(lxc_env, "config", "set", "images.remote_cache_expiry", "3")
    lxc(lxc_env, "config", "set", "images.auto_update_cached", "false")
    config = lapi.get("/1.0").json()["metadata"]["config"]
    assert {k: config[k] for k in ("images.auto_update_interval", "images.remote_cache_expiry",
                                   "images.auto_update_cached")} == {
        "images.auto_update_interval": "12", "images.remote_cache_expiry": "3",
        "images.auto_update_cached": "false"}
    for k in ("images.auto_update_interval", "images.remote_cache_expiry",
              "images.auto_update_cached"):
        lxc(lxc_env, "config", "unset", k)
    assert "image_force_refresh" in lapi.get("/1.0").json()["metadata"]["api_extensions"]


# -- refresh -----------------------------------------------------------------------------


def test_lxc_image_refresh_takes_the_newer_version(lapi, lxc_env, streams, world):
    old = fp_of(streams, V1)
    lxc(lxc_env, "image", "copy", f"ss:{PRODUCT}", "local:", "--alias", "life-a",
        "--alias", "life-b", "--auto-update")
    img = images(lapi)[old]
    assert img["auto_update"] is True and img["cached"] is False
    assert img["update_source"]["alias"] == PRODUCT
    lapi.patch(f"/1.0/images/{old}", json={"public": True, "profiles": [world.profile]})

    r = lxc(lxc_env, "image", "refresh", "life-a")
    assert "up to date" in r.stdout.lower(), r.stdout
    assert set(images(lapi)) >= {old}

    streams.add_version(V2, rootfs=("squashfs",))
    new = fp_of(streams, V2)
    import subprocess
    import time

    monitor = subprocess.Popen(["lxc", "monitor", "--type", "lifecycle", "--format",
                                "json"], env=lxc_env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # subscribed before the first event
        r = lxc(lxc_env, "image", "refresh", "life-a")
        time.sleep(0.5)
    finally:
        monitor.terminate()  # our own lxc monitor, by its PID
        out = monitor.communicate(timeout=10)[0]
    assert "refreshed successfully" in r.stdout.lower(), r.stdout
    actions = [(e["metadata"]["action"], e["metadata"]["source"])
               for e in map(json.loads, filter(None, out.splitlines()))]
    assert ("image-refreshed", f"/1.0/images/{old}") in actions, actions  # LXD: old fp
    assert ("image-deleted", f"/1.0/images/{old}") in actions, actions
    now = images(lapi)
    assert old not in now and new in now
    assert now[new]["auto_update"] is True and now[new]["public"] is True
    assert now[new]["profiles"] == [world.profile] and now[new]["cached"] is False
    assert sorted(a["name"] for a in now[new]["aliases"]) == ["life-a", "life-b"]
    assert now[new]["update_source"]["alias"] == PRODUCT

    # a new instance uses the new version
    name = world.name("refreshed")
    lxc(lxc_env, "launch", "life-a", name, "-p", world.profile)
    assert world.get(name)["config"]["volatile.base_image"] == new
    serial = lxc(lxc_env, "exec", name, "--", "cat", "/etc/image-serial").stdout
    assert V2 in serial
    world.remove(name)

    # REST: LXD's operation metadata; nothing newer now
    op = wait_op(lapi, lapi.post(f"/1.0/images/{new}/refresh"))
    assert op["metadata"]["refreshed"] is False
    delete_image(lapi, new)


def test_refresh_of_an_image_without_source_or_unknown(lapi, world):
    r = lapi.post(f"/1.0/images/{world.fingerprint}/refresh")
    assert r.status_code == 400 and "no update source" in r.json()["error"], r.text
    r = lapi.post("/1.0/images/" + "0" * 64 + "/refresh")
    assert r.status_code == 404, r.text


def test_refresh_from_an_unreachable_server_fails_and_keeps_the_image(
        lapi, lstack, busybox_tarball, tmp_path):
    srv = StreamServer(tmp_path / "gone", busybox_tarball, os_name="gonebox").start()
    env = {**lstack.env, "LXD_DIR": str(lstack.dir),
           **lxc_remote_env(tmp_path / "conf", "gone", srv)}
    try:
        fp = srv.add_version(V1, rootfs=("squashfs",))["squashfs"]
        lxc(env, "image", "copy", "gone:gonebox/1.36", "local:", "--alias", "life-gone",
            "--auto-update")
    finally:
        srv.stop()
    try:
        r = lxc(env, "image", "refresh", "life-gone", check=False)
        assert r.returncode != 0 and srv.url.split("//")[1] in r.stderr, r.stderr
        assert alias_target(lapi, "life-gone") == fp and fp in images(lapi)
    finally:
        delete_image(lapi, fp)


@pytest.mark.parametrize("fault", ["refresh:after_pull", "refresh:after_alias"])
def test_refresh_killed_midway_is_finished_by_the_next(lapi, lstack, lxc_env, streams,
                                                        fault):
    from .test_faults import start_again, wait_dead, wait_final

    variant = "crash" + fault.rsplit("_", 1)[1]
    old = streams.add_version(V1, variant=variant, rootfs=("squashfs",))["squashfs"]
    lxc(lxc_env, "image", "copy", f"ss:{PRODUCT}/{variant}", "local:", "--alias",
        f"{variant}-1", "--alias", f"{variant}-2", "--auto-update")
    new = streams.add_version(V2, variant=variant, rootfs=("squashfs",))["squashfs"]
    restart(lstack, "image", fault=fault)
    r = lapi.post(f"/1.0/images/{old}/refresh")
    assert r.status_code == 202, r.text
    wait_dead(lstack, "image")
    start_again(lstack, "image")
    op = wait_final(lapi, r.json()["operation"], 60)
    assert op["status"] == "Failure"
    assert {old, new} <= set(images(lapi))  # both versions: nothing was undone
    # after_pull: the alias still names the old version, which is refreshed; after_alias:
    # it names the new one (up to date), and the old one left behind is finished too
    r = lxc(lxc_env, "image", "refresh", f"{variant}-1")
    want = "refreshed successfully" if fault.endswith("pull") else "already up to date"
    assert want in r.stdout.lower(), r.stdout
    now = images(lapi)
    assert old not in now
    assert sorted(a["name"] for a in now[new]["aliases"]) == [f"{variant}-1", f"{variant}-2"]
    assert now[new]["auto_update"] is True and now[new]["cached"] is False
    delete_image(lapi, new)


def test_periodic_auto_update_without_a_command(lapi, lstack, lxc_env, streams):
    old = fp_of(streams, V1, "auto")
    lxc(lxc_env, "image", "copy", f"ss:{PRODUCT}/auto", "local:", "--alias", "life-auto",
        "--auto-update")
    streams.add_version(V2, variant="auto", rootfs=("squashfs",))
    new = fp_of(streams, V2, "auto")
    # its last check long ago: due at the next pass (interval 6 h by default)
    change_image_record(lstack, old, _update_checked_at="2020-01-01T00:00:00.000000000Z")
    restart(lstack, "image")
    wait_for(lambda: alias_target(lapi, "life-auto") == new, 90,
             what="the periodic task to refresh the auto_update image")
    wait_for(lambda: old not in images(lapi), 30, what="the old version to go")
    assert images(lapi)[new]["auto_update"] is True
    delete_image(lapi, new)


def test_auto_update_interval_zero_never_checks(lapi, lstack, lxc_env, streams):
    lxc(lxc_env, "image", "copy", f"ss:{PRODUCT}/auto", "local:", "--alias", "life-auto0",
        "--auto-update")
    cur = alias_target(lapi, "life-auto0")
    streams.add_version(V3, variant="auto", rootfs=("squashfs",))
    lxc(lxc_env, "config", "set", "images.auto_update_interval", "0")
    try:
        change_image_record(lstack, cur, _update_checked_at="2020-01-01T00:00:00.000000000Z")
        restart_and_wait_passes(lstack, 2)
        assert alias_target(lapi, "life-auto0") == cur
    finally:
        lxc(lxc_env, "config", "unset", "images.auto_update_interval")
        delete_image(lapi, cur)


def restart_and_wait_passes(stack: Stack, passes: int) -> None:
    """Restart the image service and wait until its periodic task ended ``passes`` passes
    (the first 1 s after the start, then one a second): the sign that a change it should
    not make would have been made by then."""
    log = stack.log_path("image")

    def ended() -> int:
        return log.read_text(errors="replace").count('"event": "image task pass done"')

    stack.stop("image")  # a pass of the old process is not one of the new
    before = ended()
    restart(stack, "image")
    wait_for(lambda: ended() >= before + passes, 30, what=f"{passes} image task passes")


# -- expiry of cached images -------------------------------------------------------------


def test_unused_cached_image_expires_fresh_one_stays(lapi, lstack, lxc_env, streams, world):
    old, fresh = fp_of(streams, V1, "exp"), fp_of(streams, V1, "fresh")
    for variant in ("exp", "fresh"):
        name = world.name(f"cache-{variant}")
        lxc(lxc_env, "launch", f"ss:{PRODUCT}/{variant}", name, "-p", world.profile)
        world.remove(name)
    got = images(lapi)
    assert got[old]["cached"] is True and got[fresh]["cached"] is True
    assert not got[old]["last_used_at"].startswith("0001")  # the launch stamped it
    change_image_record(lstack, old, last_used_at="2020-01-01T00:00:00.000000000Z")
    restart(lstack, "image")
    wait_for(lambda: old not in images(lapi), 60, what="the expired cached image to go")
    pools = json.dumps(lapi.get(f"/1.0/storage-pools/{world.pool}/volumes",
                                params={"recursion": 1}).json()["metadata"])
    assert old not in pools  # its image volume went with it
    assert fresh in images(lapi)  # used just now: kept
    delete_image(lapi, fresh)


def test_expiry_zero_keeps_cached_images(lapi, lstack, lxc_env, streams, world):
    fp = fp_of(streams, V1, "exp")
    name = world.name("cache-keep")
    lxc(lxc_env, "launch", f"ss:{PRODUCT}/exp", name, "-p", world.profile)
    world.remove(name)
    lxc(lxc_env, "config", "set", "images.remote_cache_expiry", "0")
    try:
        change_image_record(lstack, fp, last_used_at="2020-01-01T00:00:00.000000000Z")
        restart_and_wait_passes(lstack, 2)
        assert fp in images(lapi)
    finally:
        lxc(lxc_env, "config", "unset", "images.remote_cache_expiry")
        delete_image(lapi, fp)


@pytest.fixture
def bpool(lapi, world):
    """A btrfs pool and a profile on it, beside the world (whose image is on dir)."""
    pool, profile = world.prefix + "bt", world.prefix + "btpr"
    r = lapi.post("/1.0/storage-pools", json={"name": pool, "driver": "btrfs",
                                              "config": {"size": "768MiB"}})
    assert r.status_code == 200, r.text
    r = lapi.post("/1.0/profiles", json={"name": profile, "devices": {
        "root": {"type": "disk", "path": "/", "pool": pool}}})
    assert r.status_code == 200, r.text
    yield pool, profile
    lapi.delete(f"/1.0/profiles/{profile}")
    r = lapi.delete(f"/1.0/storage-pools/{pool}")
    assert r.status_code in (200, 404), r.text


def test_expired_image_of_a_running_instance_on_btrfs(lapi, lstack, lxc_env, streams,
                                                      world, bpool):
    """btrfs instance volumes are snapshots that stand alone (as LXD): the expired image
    and its image subvolume go, the instance keeps running and starts again."""
    fp = streams.add_version(V1, variant="bt", rootfs=("squashfs",))["squashfs"]
    pool, profile = bpool
    name = world.name("bt")
    try:
        lxc(lxc_env, "launch", f"ss:{PRODUCT}/bt", name, "-p", profile)
        vols = lapi.get(f"/1.0/storage-pools/{pool}/volumes/image").json()["metadata"]
        assert any(v.endswith(fp) for v in vols), vols
        change_image_record(lstack, fp, last_used_at="2020-01-01T00:00:00.000000000Z")
        restart(lstack, "image")
        wait_for(lambda: fp not in images(lapi), 60, what="the expired cached image to go")
        vols = lapi.get(f"/1.0/storage-pools/{pool}/volumes/image").json()["metadata"]
        assert not any(v.endswith(fp) for v in vols), vols
        assert world.live(name)["status"] == "Running"
        world.state(name, "stop", force=True)
        world.state(name, "start")
        assert "bt " + V1 in lxc(lxc_env, "exec", name, "--", "cat", "/etc/image-serial").stdout
    finally:
        world.remove(name)
        delete_image(lapi, fp)
