"""OCI application containers: images from a real registry on loopback, run as apps.

The registry is Debian's docker-registry with TLS (a self-signed certificate the test
passes as ``source.certificate``) and basic auth; the images are built here from
busybox with umoci and pushed with skopeo (tests/oci_registry.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from services.image.fetch_oci import FETCHER
from shared.messages.image import PullSource

from .oci_registry import build_busybox_image, free_port, start_registry
from .stack import wait_for
from .world import lxc, make_world, wait_op

pytestmark = pytest.mark.root
for tool in ("skopeo", "umoci", "docker-registry", "lxc-execute"):
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}", allow_module_level=True)

USER, PASSWORD = "corral", "s3cret-pw"
ECHO = ("echo hello-$FOO from $(pwd) as $(id -u):$(id -g); cat /etc/motd; "
        "ls /etc/gone 2>/dev/null || echo gone-is-gone; exit 3")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A TLS + basic-auth registry with an echoing app (exits 3) and a sleeper."""
    d = tmp_path_factory.mktemp("oci")
    reg = start_registry(d / "registry", USER, PASSWORD)
    try:
        work = d / "build"
        work.mkdir()
        lay = build_busybox_image(work, "echo", entrypoint=["/bin/sh", "-c"], cmd=[ECHO],
                                  env=["FOO=bar", "PATH=/bin"], workdir="/srv/app")
        reg.push(lay, "echo", "corral/echo:v1")
        build_busybox_image(work, "sleep", entrypoint=["/bin/sleep"], cmd=["600"],
                            env=["PATH=/bin"], workdir="/srv/app", user="1000:1000")
        reg.push(lay, "sleep", "corral/sleep:v1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


def source(reg, alias: str, **kw) -> PullSource:
    base = {"server": reg.server, "protocol": "oci", "alias": alias,
            "certificate": reg.certificate, "credentials": reg.credentials}
    return PullSource(**{**base, **kw})


async def _noprogress(part: str, done: int, total: int) -> None:
    pass


def fetch(src: PullSource, work: Path):
    async def go():
        remote = await FETCHER.resolve(src, "container")
        return remote, await FETCHER.download(src, remote, work, _noprogress)
    return asyncio.run(go())


def fetch_error(src: PullSource, instance_type: str = "container"):
    async def go():
        try:
            await FETCHER.resolve(src, instance_type)
        except Exception as e:  # noqa: BLE001 - the error is what is tested
            return e
        raise AssertionError("resolve did not fail")
    return asyncio.run(go())


def import_by_hand(api, world, src: PullSource, work: Path) -> str:
    """The fetcher's files uploaded as a split image (the pull path does this itself)."""
    work.mkdir(parents=True, exist_ok=True)
    _remote, got = fetch(src, work)
    with open(got.meta, "rb") as m, open(got.rootfs, "rb") as rf:
        r = api.post("/1.0/images", files={"metadata": (got.meta.name, m),
                                           "rootfs": (got.rootfs.name, rf)})
    op = wait_op(api, r)
    assert op["status"] == "Success", op["err"]
    return op["metadata"]["fingerprint"]


@pytest.fixture(scope="module")
def images(api, world, registry, tmp_path_factory):
    d = tmp_path_factory.mktemp("oci-import")
    fps = {"echo": import_by_hand(api, world, source(registry, "corral/echo:v1"), d / "e"),
           "sleep": import_by_hand(api, world, source(registry, "corral/sleep:v1"), d / "s")}
    yield fps
    for fp in fps.values():
        delete_image(api, fp)


def create(world, tag: str, fp: str, **config: str) -> str:
    return world.create(tag, source={"type": "image", "fingerprint": fp},
                        profiles=[world.profile], config=config)


def exit_code(world, name: str) -> int:
    """The app's exit status: in the state as soon as it says Stopped."""
    states: list[dict] = []
    wait_for(lambda: states.append(world.live(name)) or states[-1]["status"] == "Stopped",
             30, what=f"{name} exited")
    assert "exit_code" in states[-1], states[-1]
    return states[-1]["exit_code"]


def console_log(api, name: str) -> str:
    r = api.get(f"/1.0/instances/{name}/console")
    assert r.status_code == 200, r.text
    return r.text


# ---- the fetcher ----------------------------------------------------------------------

def test_fetcher_makes_a_split_image(registry, tmp_path):
    remote, got = fetch(source(registry, "corral/echo:v1"), tmp_path)
    assert remote.fingerprint == registry.pushed["corral/echo:v1"].split(":")[1]
    assert remote.type == "container" and remote.properties["type"] == "oci"
    assert got.fingerprint_is_content is False and got.rootfs_part == "rootfs"
    with tarfile.open(got.meta) as tf:
        assert sorted(tf.getnames()) == ["config.json", "metadata.yaml"]
        cfg = json.load(tf.extractfile("config.json"))
    assert cfg["process"]["args"] == ["/bin/sh", "-c", ECHO]
    assert cfg["process"]["cwd"] == "/srv/app" and "FOO=bar" in cfg["process"]["env"]
    listing = subprocess.run(["unsquashfs", "-lln", str(got.rootfs)], capture_output=True,
                             text=True, check=True).stdout
    assert "/etc/motd" in listing and "/bin/busybox" in listing
    assert "/etc/gone" not in listing  # the later layer's whiteout was applied
    assert any(ln.split()[1] == "1000/1000" and ln.endswith("/srv/app")
               for ln in listing.splitlines())
    # Pinned by digest: the same image, the same fingerprint.
    by_digest = fetch_error_free(source(registry, "corral/echo@"
                                        + registry.pushed["corral/echo:v1"]))
    assert by_digest.fingerprint == remote.fingerprint


def fetch_error_free(src: PullSource):
    return asyncio.run(FETCHER.resolve(src, "container"))


def test_fetcher_errors(registry, tmp_path):
    e = fetch_error(source(registry, "corral/echo:nope"))
    assert e.code == 404 and "not found" in e.message
    assert fetch_error(source(registry, "corral/absent:v1")).code == 404
    e = fetch_error(source(registry, "corral/echo:v1", credentials=f"{USER}:wrong"))
    assert e.code == 403 and "credentials" in e.message
    assert fetch_error(source(registry, "corral/echo:v1", credentials="")).code == 403
    e = fetch_error(source(registry, "corral/echo:v1", certificate=""))
    assert e.code == 503 and "source.certificate" in e.message
    e = fetch_error(source(registry, "corral/echo:v1", server=f"https://127.0.0.1:{free_port()}"))
    assert e.code == 503 and "cannot be reached" in e.message
    assert fetch_error(source(registry, "Bad Name:v1")).code == 400
    assert fetch_error(source(registry, "corral/echo@sha256:1234")).code == 400
    e = fetch_error(source(registry, "corral/echo@sha256:" + "0" * 64))
    assert e.code == 404
    assert fetch_error(source(registry, "corral/echo:v1"), "virtual-machine").code == 400


def test_registry_down_after_resolve(tmp_path):
    """The registry stops between resolve and download: a 503, and no files left."""
    reg = start_registry(tmp_path / "r2")
    try:
        lay = build_busybox_image(tmp_path / "b", "x", entrypoint=["/bin/true"])
        reg.push(lay, "x", "corral/x:v1")
        src = PullSource(server=reg.server, protocol="oci", alias="corral/x:v1",
                         certificate=reg.certificate)
        remote = asyncio.run(FETCHER.resolve(src, "container"))
        assert remote.fingerprint == reg.pushed["corral/x:v1"].split(":")[1]
    finally:
        reg.stop()
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(Exception) as exc:
        asyncio.run(FETCHER.download(src, remote, work, _noprogress))
    assert getattr(exc.value, "code", None) == 503
    assert list(work.iterdir()) == []


# ---- the runtime ----------------------------------------------------------------------

def test_app_runs_logs_and_keeps_its_exit_code(world, api, stack, images):
    name = create(world, "echo", images["echo"])
    cfg = world.get(name)["config"]
    assert cfg["image.type"] == "oci"
    world.state(name, "start")
    assert exit_code(world, name) == 3
    log = console_log(api, name)
    assert "hello-bar" in lxc(stack, "console", name, "--show-log").stdout  # stock client
    assert "hello-bar from /srv/app as 0:0" in log
    assert "oci image echo" in log and "gone-is-gone" in log
    # Again, with the overrides: the entrypoint, cwd, ids and an environment key.
    r = api.patch(f"/1.0/instances/{name}", json={"config": {
        "oci.entrypoint": "/bin/sh -c 'echo again-$FOO-$EXTRA in $(pwd) as $(id -u):$(id -g)'",
        "oci.cwd": "/etc", "oci.uid": "1000", "oci.gid": "1000",
        "environment.EXTRA": "x y"}})
    assert wait_op(api, r)["status"] == "Success"
    world.state(name, "start")
    wait_for(lambda: "again-" in console_log(api, name), 30)
    assert exit_code(world, name) == 0
    assert "again-bar-x y in /etc as 1000:1000" in console_log(api, name)
    world.remove(name)


def test_running_app_exec_files_network_stop_delete(world, api, stack, images):
    name = create(world, "sleep", images["sleep"], **{"limits.memory": "64MiB"})
    world.state(name, "start")
    live = world.live(name)
    assert live["status"] == "Running"
    cg = [ln.split(":")[2] for ln in open(f"/proc/{live['pid']}/cgroup").read().splitlines()
          if ln.split(":")[1] == "memory"][0]
    limit = Path(f"/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes").read_text()
    assert int(limit) == 64 * 2**20  # the instance's limits apply to the app
    r = api.post(f"/1.0/instances/{name}/exec", json={
        "command": ["/bin/sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; id -u; "
                    "cat /srv/app/hello.txt; ip -4 addr show eth0"],
        "wait-for-websocket": False, "record-output": True, "interactive": False})
    op = wait_op(api, r)
    assert op["metadata"]["return"] == 0, op
    out = api.get(op["metadata"]["output"]["1"]).text
    assert "hello from the image" in out and "inet " in out  # a static address
    # The app itself runs under LXC's init, as the image's user.
    ps = api.post(f"/1.0/instances/{name}/exec", json={
        "command": ["/bin/sh", "-c", "for p in /proc/[0-9]*; do "
                    "[ \"$(cat $p/comm)\" = sleep ] && stat -c %u $p; done"],
        "wait-for-websocket": False, "record-output": True, "interactive": False})
    op = wait_op(api, ps)
    assert api.get(op["metadata"]["output"]["1"]).text.split() == ["1000"]
    # Files both ways.
    r = api.post(f"/1.0/instances/{name}/files", params={"path": "/srv/put.txt"},
                 content=b"pushed", headers={"X-LXD-type": "file"})
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/instances/{name}/files",
                   params={"path": "/srv/put.txt"}).content == b"pushed"
    # The gateway answers ping at the static address: the NIC works.
    addr = next(a["address"] for a in live["network"]["eth0"]["addresses"]
                if a["family"] == "inet")
    ping = api.post(f"/1.0/instances/{name}/exec", json={
        "command": ["/bin/sh", "-c", "gw=$(ip -4 route | grep default | cut -d' ' -f3); "
                    "ping -c1 -W3 $gw"],
        "wait-for-websocket": False, "record-output": True, "interactive": False})
    op = wait_op(api, ping)
    assert op["metadata"]["return"] == 0, (addr, api.get(op["metadata"]["output"]["1"]).text)
    # DNS, hosts and hostname as a runtime gives them: the bridge's dnsmasq is the server.
    etc = api.post(f"/1.0/instances/{name}/exec", json={
        "command": ["/bin/sh", "-c", "cat /etc/resolv.conf /etc/hosts /etc/hostname; "
                    "ip -4 route | grep default"],
        "wait-for-websocket": False, "record-output": True, "interactive": False})
    op = wait_op(api, etc)
    text = api.get(op["metadata"]["output"]["1"]).text
    gw = text.split("default via ")[1].split()[0]
    assert f"nameserver {gw}" in text and "localhost" in text, text
    assert text.count(name) >= 2, text  # in hosts and hostname
    t = time.monotonic()
    world.state(name, "stop", timeout=20)
    assert time.monotonic() - t < 15  # init.lxc forwards the stop signal to the app
    assert world.live(name)["status"] == "Stopped"
    world.remove(name)
    assert not world.lxc_dir(name).exists()


def test_oci_keys_are_checked(world, api, images):
    for key, value in (("oci.uid", "root"), ("oci.cwd", "relative"),
                       ("oci.entrypoint", "'unbalanced"), ("oci.nope", "1")):
        r = api.post("/1.0/instances", json={
            "name": world.name("bad"), "profiles": [world.profile],
            "source": {"type": "image", "fingerprint": images["sleep"]},
            "config": {key: value}})
        assert r.status_code == 400 and key in r.text, (key, r.text)
    # On a system container the keys mean nothing: refused, nothing left behind.
    bad = world.name("sys")
    r = api.post("/1.0/instances", json={
        "name": bad, "profiles": [world.profile],
        "source": {"type": "image", "alias": world.image},
        "config": {"oci.entrypoint": "/bin/true"}})
    if r.status_code == 202:
        op = wait_op(api, r, ok=False)
        assert op["status"] == "Failure" and "application containers" in op["err"]
    else:
        assert r.status_code == 400 and "application containers" in r.text
    assert api.get(f"/1.0/instances/{bad}").status_code == 404
    assert not world.lxc_dir(bad).exists()


def test_app_outlives_a_service_restart_and_its_code_is_kept(world, api, stack, images):
    """The app is not a child the service must keep: it runs on while the instance
    service is down, and its exit status is there when the service is back."""
    name = create(world, "restart", images["sleep"],
                  **{"oci.entrypoint": "/bin/sh -c 'sleep 4; echo done; exit 7'"})
    world.state(name, "start")
    stack.stop("instance")
    try:
        time.sleep(1)
        assert subprocess.run(["lxc-info", "-n", name, "-P", str(stack.dir / "lxc"), "-s"],
                              capture_output=True, text=True).stdout.split()[-1] == "RUNNING"
    finally:
        stack.start("instance")
    assert exit_code(world, name) == 7
    assert "done" in console_log(api, name)
    world.state(name, "start")  # started again: the old status is gone until it ends
    assert "exit_code" not in world.live(name)
    world.remove(name)


def test_oci_keys_on_a_system_container_update(world, api):
    name = world.create("sysupd")
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"oci.cwd": "/"}})
    if r.status_code == 202:
        op = wait_op(api, r, ok=False)
        assert op["status"] == "Failure" and "application containers" in op["err"], op
    else:
        assert r.status_code == 400 and "application containers" in r.text
    assert "oci.cwd" not in world.get(name)["config"]
    spec = json.loads((world.lxc_dir(name) / "corral.json").read_text())
    assert "oci.cwd" not in spec["spec"]["config"]  # the driver stored nothing either
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"user.x": "1"}})
    assert wait_op(api, r)["status"] == "Success"
    world.state(name, "start")
    assert world.live(name)["status"] == "Running"
    world.remove(name)


# ---- through the pull path (POST /1.0/images with a pull source) -----------------------

@pytest.fixture(scope="module")
def anon_registry(tmp_path_factory):
    """A TLS registry without auth holding the echoing app."""
    d = tmp_path_factory.mktemp("oci-anon")
    reg = start_registry(d / "registry")
    try:
        lay = build_busybox_image(d, "echo", entrypoint=["/bin/sh", "-c"], cmd=[ECHO],
                                  env=["FOO=bar", "PATH=/bin"], workdir="/srv/app")
        reg.push(lay, "echo", "corral/echo:v1")
        yield reg
    finally:
        reg.stop()


def pull_body(reg, alias: str, **kw) -> dict:
    return {"source": {"type": "image", "mode": "pull", "protocol": "oci",
                       "server": reg.server, "alias": alias, "certificate": reg.certificate,
                       **kw}}


def delete_image(api, fp: str) -> None:
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        wait_op(api, r, ok=False)


def image_fps(api) -> set[str]:
    """The OCI images in the store (other tests' images come and go meanwhile)."""
    return {i["fingerprint"] for i in api.get("/1.0/images?recursion=1").json()["metadata"]
            if i["properties"].get("type") == "oci"}


def tmp_pulls(stack) -> list[Path]:
    return list((stack.dir / "tmp").glob("image-pull-*"))


def test_pull_from_a_registry_and_launch(world, api, stack, anon_registry):
    alias = world.prefix + "-oci-echo"
    before = image_fps(api)
    r = api.post("/1.0/images", json={**pull_body(anon_registry, "corral/echo:v1"),
                                      "aliases": [{"name": alias}]})
    op = wait_op(api, r)
    assert op["status"] == "Success", op["err"]
    fp = op["metadata"]["fingerprint"]
    try:
        assert fp == anon_registry.pushed["corral/echo:v1"].split(":")[1]
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["properties"]["type"] == "oci" and img["type"] == "container"
        assert img["update_source"]["protocol"] == "oci"
        assert img["update_source"]["alias"] == "corral/echo:v1"
        name = world.create("pulled", source={"type": "image", "alias": alias})
        world.state(name, "start")
        assert exit_code(world, name) == 3
        assert "hello-bar from /srv/app as 0:0" in console_log(api, name)
        world.remove(name)
    finally:
        delete_image(api, fp)
    assert image_fps(api) == before


def test_pull_errors_leave_nothing(world, api, stack, anon_registry, registry):
    before = image_fps(api)
    cases = [
        (pull_body(anon_registry, "corral/echo:nope"), 404, "not found"),
        (pull_body(anon_registry, "corral/echo:v1", certificate=""), 503, "certificate"),
        (pull_body(registry, "corral/echo:v1"), 403, "credentials"),
        ({"source": {**pull_body(anon_registry, "x:v1")["source"],
                     "server": f"https://127.0.0.1:{free_port()}"}}, 503, "cannot be reached"),
        (pull_body(anon_registry, "Bad:Name"), 400, "Invalid OCI"),
    ]
    for body, code, text in cases:
        r = api.post("/1.0/images", json=body)  # resolved before any operation
        assert r.status_code == code and text in r.json()["error"], (body, r.text)
    assert image_fps(api) == before
    assert tmp_pulls(stack) == []


def test_pull_with_basic_auth(world, api, stack, registry):
    """source.credentials ("user:password", as Incus's oci remotes send) reaches the
    registry: the pull works; wrong credentials are a 403 with nothing left. The
    credentials are kept nowhere: not in the image's update_source, not in any log."""
    before = image_fps(api)
    fp = registry.pushed["corral/echo:v1"].split(":")[1]
    r = api.post("/1.0/images", json=pull_body(registry, "corral/echo:v1",
                                               credentials=f"{USER}:{PASSWORD}"))
    op = wait_op(api, r)
    assert op["status"] == "Success", op["err"]
    try:
        assert op["metadata"]["fingerprint"] == fp
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["properties"]["type"] == "oci"
        assert "credentials" not in img["update_source"]
        assert PASSWORD not in json.dumps(img)
        assert PASSWORD not in json.dumps(op)
    finally:
        delete_image(api, fp)
    assert image_fps(api) == before
    for creds in (f"{USER}:wrong-pw", f"nobody:{PASSWORD}"):
        r = api.post("/1.0/images", json=pull_body(registry, "corral/echo:v1",
                                                   credentials=creds))
        if r.status_code == 202:
            op = wait_op(api, r, ok=False)
            code, err = op["status_code"], op["err"]
        else:
            code, err = r.status_code, r.json()["error"]
        assert code == 403 and "credentials" in err, (creds, code, err)
        assert PASSWORD not in err and "wrong-pw" not in err
    r = api.post("/1.0/images", json=pull_body(registry, "corral/echo:v1",
                                               credentials="no-colon"))
    assert r.status_code == 400 and "user:password" in r.json()["error"], r.text
    assert image_fps(api) == before
    assert tmp_pulls(stack) == []
    for log in (stack.dir / "logs").glob("*.log"):
        assert PASSWORD not in log.read_text(errors="replace"), log


def test_corrupt_layer_is_refused(tmp_path):
    """A registry serving a layer whose bytes do not match its digest: the download
    fails (skopeo checks every blob) and leaves no files."""
    reg = start_registry(tmp_path / "r3")
    try:
        lay = build_busybox_image(tmp_path / "b", "x", entrypoint=["/bin/true"])
        reg.push(lay, "x", "corral/bad:v1")
        src = PullSource(server=reg.server, protocol="oci", alias="corral/bad:v1",
                         certificate=reg.certificate)
        remote = asyncio.run(FETCHER.resolve(src, "container"))
        manifest = json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--cert-dir", str(reg.dir / "certs.d"),
             f"docker://{reg.host}/corral/bad:v1"], capture_output=True, check=True).stdout)
        big = max(manifest["layers"], key=lambda layer: layer["size"])["digest"]
        blob = (reg.dir / "data/docker/registry/v2/blobs/sha256" / big[7:9] / big[7:]
                / "data")
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        work = tmp_path / "w"
        work.mkdir()
        with pytest.raises(Exception) as exc:
            asyncio.run(FETCHER.download(src, remote, work, _noprogress))
        assert getattr(exc.value, "code", None) == 400, exc.value
        assert "digest" in exc.value.message
        assert list(work.iterdir()) == []
    finally:
        reg.stop()


def test_launch_from_a_registry(world, api, stack, anon_registry):
    """POST /1.0/instances with an oci pull source: pulled (cached), created, started."""
    name = world.name("launch")
    r = api.post("/1.0/instances", json={
        "name": name, "profiles": [world.profile], "start": True,
        "config": {"oci.entrypoint": "/bin/sh -c 'echo launched-$FOO; exit 5'"},
        **pull_body(anon_registry, "corral/echo:v1")})
    op = wait_op(api, r)
    assert op["status"] == "Success", op["err"]
    fp = anon_registry.pushed["corral/echo:v1"].split(":")[1]
    try:
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["cached"] is True and img["properties"]["type"] == "oci"
        assert world.get(name)["config"]["volatile.base_image"] == fp
        assert exit_code(world, name) == 5
        assert "launched-bar" in console_log(api, name)
        world.remove(name)
        # A bad tag: the create fails, nothing is left.
        bad = world.name("badtag")
        r = api.post("/1.0/instances", json={
            "name": bad, "profiles": [world.profile],
            **pull_body(anon_registry, "corral/echo:nope")})
        if r.status_code == 202:
            op = wait_op(api, r, ok=False)
            assert op["status"] == "Failure" and "not found" in op["err"], op
        else:
            assert r.status_code == 404 and "not found" in r.text, r.text
        assert api.get(f"/1.0/instances/{bad}").status_code == 404
        assert not world.lxc_dir(bad).exists()
    finally:
        delete_image(api, fp)


def test_app_on_a_dir_pool(world, api, anon_registry):
    """The same app with its root on a dir pool (config.json beside a plain directory
    rootfs); the module's world holds btrfs."""
    pool = world.prefix + "dirp"
    r = api.post("/1.0/storage-pools", json={"name": pool, "driver": "dir"})
    assert r.status_code == 200, r.text
    name = world.name("dirapp")
    try:
        r = api.post("/1.0/instances", json={
            "name": name, "profiles": [world.profile], "start": True,
            "devices": {"root": {"type": "disk", "path": "/", "pool": pool}},
            **pull_body(anon_registry, "corral/echo:v1")})
        assert wait_op(api, r)["status"] == "Success"
        assert exit_code(world, name) == 3
        assert "hello-bar from /srv/app as 0:0" in console_log(api, name)
        vol = world.stack.dir / "storage-pools" / pool / "containers" / name
        assert (vol / "config.json").is_file() and (vol / "rootfs/etc/motd").is_file()
        world.remove(name)
    finally:
        world.remove(name)
        delete_image(api, anon_registry.pushed["corral/echo:v1"].split(":")[1])
        api.delete(f"/1.0/storage-pools/{pool}")
    assert api.get(f"/1.0/storage-pools/{pool}").status_code == 404  # nothing left


def test_missing_entrypoint_is_refused_at_start(world, api, images):
    """LXC's init would report a failed exec nowhere the user looks: the start is a 400
    naming the command, and the instance stays stopped and startable."""
    name = create(world, "noexec", images["sleep"], **{"oci.entrypoint": "/no/such/app"})
    op = world.state(name, "start", ok=False)
    assert op["status"] == "Failure" and "/no/such/app" in op["err"], op
    assert world.live(name)["status"] == "Stopped"
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"oci.entrypoint": "sleep 30"}})
    assert wait_op(api, r)["status"] == "Success"
    world.state(name, "start")  # found in the image's PATH, through busybox's symlink
    assert world.live(name)["status"] == "Running"
    world.remove(name)


def test_a_copy_of_an_app_is_an_app(world, api, stack, images):
    name = create(world, "orig", images["echo"], **{"oci.cwd": "/etc"})
    copy = world.name("copy")
    lxc(stack, "copy", name, copy)
    world.state(copy, "start")
    assert exit_code(world, copy) == 3
    assert "hello-bar from /etc as 0:0" in console_log(api, copy)  # its config came too
    world.remove(copy)
    world.remove(name)


def test_a_published_app_is_an_app(world, api, stack, images):
    """lxc publish of an app keeps its runtime config.json (beside metadata.yaml in the
    tarball) and the type: oci property, also when the properties are replaced: a launch
    from the published image runs the app and keeps its exit code."""
    name = create(world, "pub", images["echo"], **{"oci.cwd": "/etc"})
    world.state(name, "start")
    assert exit_code(world, name) == 3  # it ran: its start wrote beside config.json
    alias = world.prefix + "-published-app"
    before = image_fps(api)
    lxc(stack, "publish", name, "--alias", alias, "note=mine")
    fp = api.get(f"/1.0/images/aliases/{alias}").json()["metadata"]["target"]
    try:
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["properties"] == {"type": "oci", "note": "mine"}, img["properties"]
        assert img["type"] == "container"
        r = api.get(f"/1.0/images/{fp}/export")
        assert r.status_code == 200, r.text
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:*") as tf:
            names = set(tf.getnames())
            config = json.load(tf.extractfile("config.json"))  # type: ignore[arg-type]
        assert {"metadata.yaml", "config.json", "rootfs/etc/motd"} <= names
        assert not any(n.startswith("oci-network") for n in names), names
        assert config["process"]["cwd"] == "/srv/app"  # the image's, not the instance's
        launched = world.create("frompub", source={"type": "image", "alias": alias},
                                profiles=[world.profile])
        world.state(launched, "start")
        assert exit_code(world, launched) == 3
        assert "hello-bar from /srv/app as 0:0" in console_log(api, launched)
        world.remove(launched)
        # published again without properties: the instance's metadata.yaml ones (oci)
        lxc(stack, "publish", name, "--alias", alias + "-2")
        fp2 = api.get(f"/1.0/images/aliases/{alias}-2").json()["metadata"]["target"]
        assert fp2 in image_fps(api)
        delete_image(api, fp2)
    finally:
        world.remove(name)
        delete_image(api, fp)
    assert image_fps(api) == before
