"""Pulling images from image servers (simplestreams and lxd protocols) with the stock client
and the REST API: ``lxc image copy``, ``lxc launch``, progress, failure cases that leave
nothing behind, and a pull interrupted by a crash of the image service."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from shared.image import simplestreams as ss

from .simplestreams import StreamServer, lxc_remote_env  # noqa: F401
from .world import lxc_conf, wait_op

# the stream_server fixture
pytest_plugins = ["tests.simplestreams"]

pytestmark = pytest.mark.root


def stock(env: dict[str, str], *args: str, check: bool = True, stack=None
          ) -> subprocess.CompletedProcess:
    """The stock client with a private LXD_CONF (and the test stack as ``local:``)."""
    full = {**os.environ, **env}
    if stack is not None:
        full.update({**stack.env, "LXD_DIR": str(stack.dir), **env})
    r = subprocess.run(["lxc", *args], env=full, capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_fixture_tree_reads_the_same_in_lxc_and_in_our_parser(stream_server, tmp_path):
    """The hand-written tree is what LXD's client reads, and shared/image/simplestreams.py
    reads it the same way: same images, same fingerprints, same aliases."""
    env = lxc_remote_env(tmp_path / "conf", "ss", stream_server)
    listed = json.loads(stock(env, "image", "list", "ss:", "--format", "json").stdout)
    ctx = ssl.create_default_context(cadata=stream_server.cert_pem)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"{stream_server.url}/{path}", context=ctx) as r:
            return json.load(r)

    docs = [get(p) for p in ss.product_paths(get("streams/v1/index.json"))]
    arch = os.uname().machine
    cat = ss.Catalog.from_documents(docs, arch)
    ours = {i.fingerprint: i for i in cat.images}
    assert {i["fingerprint"] for i in listed} == set(ours)
    assert len(ours) == 5
    for img in listed:
        mine = ours[img["fingerprint"]]
        assert sorted(a["name"] for a in img["aliases"] or []) == sorted(mine.aliases)
        assert img["size"] == mine.size and img["type"] == mine.type
        assert img["properties"] == mine.properties
    fps = stream_server.fingerprints
    assert cat.by_alias("busybox/1.36").fingerprint == fps["20260102_0000"]["squashfs"]
    assert cat.by_alias("busybox/1.36/tarxz").fingerprint == \
        fps["tarxz/20260101_0000"]["root.tar.xz"]
    info = stock(env, "image", "info", "ss:busybox/1.36").stdout
    assert fps["20260102_0000"]["squashfs"] in info
    # without the pinned certificate the client refuses the self-signed server
    bare = lxc_remote_env(tmp_path / "bare", "ss", stream_server, pin=False)
    r = stock(bare, "image", "list", "ss:", check=False)
    assert r.returncode != 0 and "certificate" in r.stderr


# -- helpers ------------------------------------------------------------------------------


def images_by_fp(api) -> dict[str, dict]:
    return {i["fingerprint"]: i for i in
            api.get("/1.0/images", params={"recursion": 1}).json()["metadata"]}


def delete_image(api, fp: str) -> None:
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        wait_op(api, r)


def image_objects(stack) -> set[str]:
    """Names in the ``images`` object store (``<fp>.meta``, ``<fp>.rootfs``)."""
    import asyncio

    import nats

    async def names() -> set[str]:
        creds = stack.nats.connect_options() if hasattr(stack.nats, "connect_options") \
            else {}
        nc = await nats.connect(stack.nats.url, **creds)
        try:
            store = await nc.jetstream().object_store("images")
            try:
                return {o.name for o in await store.list(ignore_deletes=True)}
            except Exception:  # nats-py raises when the store is empty
                return set()
        finally:
            await nc.close()

    return asyncio.run(names())


def pull_temp_dirs(stack) -> list[Path]:
    return sorted((stack.dir / "tmp").glob("image-pull-*"))


def pull_body(srv: StreamServer, **source) -> dict:
    return {"source": {"type": "image", "mode": "pull", "server": srv.url,
                       "protocol": "simplestreams", "certificate": srv.cert_pem, **source}}


@pytest.fixture
def ss_env(stack, stream_server, tmp_path) -> dict[str, str]:
    """The stock client with the test stack as local: and the tree as ``ss:``."""
    return {**stack.env, "LXD_DIR": str(stack.dir),
            **lxc_remote_env(tmp_path / "conf", "ss", stream_server)}


# -- lxc image copy -------------------------------------------------------------------------


def test_image_copy_squashfs_with_alias_and_auto_update(api, stack, stream_server, ss_env,
                                                        uid):
    fps = stream_server.fingerprints
    want = fps["20260102_0000"]["squashfs"]
    r = stock(ss_env, "image", "copy", "ss:busybox/1.36", "local:", "--alias", f"{uid}-bb",
              "--auto-update")
    try:
        img = images_by_fp(api)[want]
        assert img["cached"] is False and img["auto_update"] is True
        assert img["update_source"] == {
            "alias": "busybox/1.36", "certificate": stream_server.cert_pem,
            "protocol": "simplestreams", "server": stream_server.url, "image_type": ""}
        assert img["type"] == "container" and img["architecture"] == os.uname().machine
        assert img["properties"]["os"] == "busybox"
        assert img["properties"]["serial"] == "20260102_0000"
        assert [a["name"] for a in img["aliases"]] == [f"{uid}-bb"]
        assert {f"{want}.meta", f"{want}.rootfs"} <= image_objects(stack)
        assert "Image copied successfully" in r.stdout
        assert not pull_temp_dirs(stack)
        # a second copy of the same image downloads nothing and adds its alias
        before = dict(stream_server.hits)
        stock(ss_env, "image", "copy", "ss:busybox/1.36", "local:", "--alias", f"{uid}-b2")
        assert {k: v for k, v in stream_server.hits.items() if not k.endswith(".json")} == \
            {k: v for k, v in before.items() if not k.endswith(".json")}
        assert sorted(a["name"] for a in images_by_fp(api)[want]["aliases"]) == \
            [f"{uid}-b2", f"{uid}-bb"]
    finally:
        delete_image(api, want)


def test_image_copy_copy_aliases(api, stream_server, ss_env):
    """``--copy-aliases``: the server's aliases of that image become local aliases."""
    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    try:
        stock(ss_env, "image", "copy", "ss:busybox/1.36", "local:", "--copy-aliases")
        names = {a["name"] for a in images_by_fp(api)[fp]["aliases"]}
        assert {"busybox/1.36", "busybox/1.36/default", "busybox/1.36/amd64"} <= names or \
            {"busybox/1.36", "busybox/1.36/default"} <= names, names
    finally:
        for name in ("busybox/1.36", "busybox/1.36/default", "busybox/1.36/amd64",
                     "busybox/1.36/default/amd64", "busybox/1.36/arm64",
                     "busybox/1.36/default/arm64"):
            api.delete(f"/1.0/images/aliases/{name}")
        delete_image(api, fp)


def test_image_copy_root_tar_xz_and_older_version_by_fingerprint(api, stream_server,
                                                                  ss_env, uid):
    fps = stream_server.fingerprints
    txz = fps["tarxz/20260101_0000"]["root.tar.xz"]
    old = fps["20260101_0000"]["squashfs"]
    try:
        stock(ss_env, "image", "copy", "ss:busybox/1.36/tarxz", "local:")
        stock(ss_env, "image", "copy", f"ss:{old[:12]}", "local:")
        have = images_by_fp(api)
        assert have[txz]["properties"]["type"] == "root.tar.xz"
        assert have[txz]["size"] == sum(
            stream_server.item_path("20260101_0000", t, "tarxz").stat().st_size
            for t in ("lxd.tar.xz", "root.tar.xz"))
        assert have[old]["properties"]["serial"] == "20260101_0000"
        assert have[old]["update_source"]["alias"] == old[:12]
    finally:
        delete_image(api, txz)
        delete_image(api, old)


# -- progress and shared downloads -----------------------------------------------------------


def test_progress_in_operation_and_in_lxc_output(api, stack, stream_server, ss_env):
    """The operation carries LXD's ``download_progress`` text while it downloads, and the
    stock client prints it."""
    import re
    import threading
    import time

    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    stream_server.throttle = 400_000  # ~1 MB rootfs: a few seconds
    seen: list[str] = []
    try:
        r = api.post("/1.0/images", json=pull_body(stream_server, alias="busybox/1.36"))
        assert r.status_code == 202, r.text
        op_url = r.json()["operation"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            op = api.get(op_url).json()["metadata"]
            text = (op.get("metadata") or {}).get("download_progress")
            if text and text not in seen:
                seen.append(text)
            if op["status"] != "Running":
                break
            time.sleep(0.1)
        assert op["status"] == "Success", op
        assert op["metadata"]["fingerprint"] == fp
        assert any(re.fullmatch(r"rootfs: \d+% \(\d+(\.\d\d)?[kMG]?B/s\)", t) for t in seen), seen
        delete_image(api, fp)
        # the stock client shows it (its progress line goes to stdout)
        out: dict[str, str] = {}
        t = threading.Thread(target=lambda: out.setdefault("r", stock(
            ss_env, "image", "copy", "ss:busybox/1.36", "local:").stdout))
        t.start()
        t.join(120)
        assert "rootfs: " in out["r"] and "%" in out["r"], out
    finally:
        stream_server.throttle = 0
        delete_image(api, fp)


def test_concurrent_pulls_share_one_download(api, stream_server, uid):
    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    root = str(stream_server.item_path("20260102_0000", "squashfs")
               .relative_to(stream_server.root))
    stream_server.throttle = 500_000
    try:
        rs = [api.post("/1.0/images", json={
            **pull_body(stream_server, fingerprint="busybox/1.36"),
            "aliases": [{"name": f"{uid}-{i}"}]}) for i in range(3)]
        ops = [wait_op(api, r) for r in rs]
        assert {o["metadata"]["fingerprint"] for o in ops} == {fp}
        # the pulls that waited were shown the download's progress too
        assert all(o["metadata"].get("download_progress", "").startswith("rootfs: ")
                   for o in ops), ops
        assert stream_server.hits[root] == 1
        assert sorted(a["name"] for a in images_by_fp(api)[fp]["aliases"]) == \
            [f"{uid}-0", f"{uid}-1", f"{uid}-2"]
    finally:
        stream_server.throttle = 0
        delete_image(api, fp)


# -- failures leave nothing behind ------------------------------------------------------


def assert_nothing_left(api, stack, fp: str | None = None) -> None:
    if fp:
        assert fp not in images_by_fp(api)
        assert not {n for n in image_objects(stack) if n.startswith(fp)}
    assert not pull_temp_dirs(stack)


def error(r) -> tuple[int, str]:
    body = r.json()
    return body["error_code"], body["error"]


def test_unknown_alias_and_server_path_are_404(api, stack, stream_server):
    r = api.post("/1.0/images", json=pull_body(stream_server, alias="nosuch/1.0"))
    code, msg = error(r)
    assert r.status_code == 404 and code == 404
    assert "nosuch/1.0" in msg and stream_server.url in msg
    srv = pull_body(stream_server, alias="busybox/1.36")
    srv["source"]["server"] = stream_server.url + "/not/a/tree"
    r = api.post("/1.0/images", json=srv)
    assert r.status_code == 404, r.text
    assert "index.json" in error(r)[1]
    assert_nothing_left(api, stack)


@pytest.mark.parametrize("keep_size", [True, False], ids=["checksum", "size"])
def test_damaged_file_fails_and_leaves_nothing(api, stack, stream_server, keep_size):
    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    stream_server.corrupt("20260102_0000", "squashfs", keep_size=keep_size)
    op = wait_op(api, api.post("/1.0/images", json=pull_body(
        stream_server, alias="busybox/1.36")), ok=False)
    assert op["status"] == "Failure"
    assert ("Checksum mismatch" if keep_size else "Size mismatch") in op["err"], op
    assert "rootfs.squashfs" in op["err"]
    assert_nothing_left(api, stack, fp)
    # the other root type of the same version is intact and still pulls
    other = stream_server.fingerprints["20260102_0000"]["root.tar.xz"]
    try:
        wait_op(api, api.post("/1.0/images", json=pull_body(stream_server,
                                                            fingerprint=other)))
    finally:
        delete_image(api, other)


def test_index_fingerprint_that_files_do_not_match(api, stack, stream_server):
    """Each file matches its own sha256 but the combined fingerprint is wrong: refused."""
    product = stream_server.products[stream_server.product_name()]
    meta = product["versions"]["20260102_0000"]["items"]["lxd.tar.xz"]
    bogus = "f" * 64
    meta["combined_squashfs_sha256"] = bogus
    stream_server.write()
    op = wait_op(api, api.post("/1.0/images", json=pull_body(
        stream_server, fingerprint=bogus)), ok=False)
    assert "Fingerprints do not match" in op["err"] and bogus in op["err"]
    assert_nothing_left(api, stack, bogus)


def test_tls_failures_and_unreachable_server(api, stack, stream_server, tmp_path):
    from .simplestreams import free_port, make_cert

    _c, _k, other_pem = make_cert(tmp_path / "other")
    body = pull_body(stream_server, alias="busybox/1.36", certificate=other_pem)
    r = api.post("/1.0/images", json=body)
    assert r.status_code == 400, r.text
    assert "not the pinned one" in error(r)[1]
    body["source"]["certificate"] = ""
    r = api.post("/1.0/images", json=body)
    assert r.status_code == 400, r.text
    assert "self-signed" in error(r)[1] and "source.certificate" in error(r)[1]
    body["source"]["certificate"] = "not a certificate"
    r = api.post("/1.0/images", json=body)
    assert r.status_code == 400 and "certificate" in error(r)[1]
    body["source"].update(server=f"https://127.0.0.1:{free_port()}",
                          certificate=stream_server.cert_pem)
    r = api.post("/1.0/images", json=body)
    assert r.status_code == 503, r.text
    assert "unreachable" in error(r)[1]
    r = api.post("/1.0/images", json={"source": {**body["source"], "protocol": "ftp"}})
    assert r.status_code == 400 and "protocol" in error(r)[1]
    assert_nothing_left(api, stack)


# -- a crash mid-download ---------------------------------------------------------------


def _restart_image(stack, fault: str | None = None) -> None:
    """Stop the image service (by PID) and start it again, armed with ``fault``."""
    from .stack import wait_for

    stack.stop("image")
    env = stack.env
    stack.env = {**env, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        stack.start("image")
    finally:
        stack.env = env
    wait_for(stack.ready, 60, what="the image service to answer")


def test_image_service_killed_mid_download(api, stack, stream_server):
    """Killed (SIGKILL) while the rootfs downloads: the operation fails within seconds,
    nothing is stored, the temp dir goes at the next start, and a new pull works."""
    import signal

    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    stream_server.throttle = 300_000
    _restart_image(stack, "pull:downloading")
    try:
        r = api.post("/1.0/images", json=pull_body(stream_server, alias="busybox/1.36"))
        assert r.status_code == 202, r.text
        proc = stack.procs["image"]
        proc.wait(60)
        assert proc.returncode == -signal.SIGKILL
        stack.procs.pop("image")
        assert pull_temp_dirs(stack), "the killed pull left no temp dir: fault point missed?"
    finally:
        stream_server.throttle = 0
        _restart_image(stack)
    op = api.get(f"{r.json()['operation']}/wait", params={"timeout": 60},
                 timeout=70).json()["metadata"]
    assert op["status"] == "Failure", op
    assert_nothing_left(api, stack, fp)
    try:
        op = wait_op(api, api.post("/1.0/images", json=pull_body(
            stream_server, alias="busybox/1.36")))
        assert op["metadata"]["fingerprint"] == fp
    finally:
        delete_image(api, fp)


# -- lxc launch from an image server --------------------------------------------------------


@pytest.fixture(params=["dir", "btrfs"])
def world(request, api, stack, busybox_tarball):
    from .world import make_world

    with make_world(api, stack, busybox_tarball, network=False,
                    pool_driver=request.param) as w:
        yield w


def test_launch_pulls_a_cached_image_and_shows_progress(api, stack, stream_server, ss_env,
                                                        world):
    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    name = world.name("c1")
    config_before = api.get("/1.0").json()["metadata"]["config"]
    stream_server.throttle = 400_000
    try:
        r = stock(ss_env, "launch", "ss:busybox/1.36", name, "-p", world.profile)
        stream_server.throttle = 0
        assert "Retrieving image: rootfs: " in r.stdout, r.stdout
        img = images_by_fp(api)[fp]
        # images.auto_update_cached (default true): a cached image follows its source
        assert img["cached"] is True and img["auto_update"] is True
        assert img["update_source"]["alias"] == "busybox/1.36"
        assert img["update_source"]["protocol"] == "simplestreams"
        inst = world.get(name)
        assert inst["status"] == "Running"
        assert inst["config"]["volatile.base_image"] == fp
        assert inst["config"]["image.serial"] == "20260102_0000"
        out = stock(ss_env, "exec", name, "--", "cat", "/etc/image-serial").stdout
        assert out.strip() == "default 20260102_0000"
        # a second launch uses the local copy: no image file fetched again
        files = {k: v for k, v in stream_server.hits.items() if not k.endswith(".json")}
        name2 = world.name("c2")
        stock(ss_env, "init", "ss:busybox/1.36", name2, "-p", world.profile)
        assert {k: v for k, v in stream_server.hits.items() if not k.endswith(".json")} \
            == files
        assert world.get(name2)["config"]["volatile.base_image"] == fp
        # a newer version on the server: a launch by alias still takes the cached,
        # auto-updated image (LXD's PreferCached; its refresh brings the new one)
        newer = stream_server.add_version("20260104_0000")["squashfs"]
        name3 = world.name("c3")
        stock(ss_env, "init", "ss:busybox/1.36", name3, "-p", world.profile)
        assert world.get(name3)["config"]["volatile.base_image"] == fp
        assert newer not in images_by_fp(api)
        # ... unless auto-updates are off (images.auto_update_interval 0): the new version
        assert api.patch("/1.0", json={"config": {"images.auto_update_interval": "0"}}
                         ).status_code == 200
        name4 = world.name("c4")
        stock(ss_env, "init", "ss:busybox/1.36", name4, "-p", world.profile)
        assert world.get(name4)["config"]["volatile.base_image"] == newer
    finally:
        api.put("/1.0", json={"config": config_before})
        stream_server.throttle = 0
        for n in list(world.instances):
            world.remove(n)
        delete_image(api, fp)
        delete_image(api, stream_server.fingerprints.get("20260104_0000", {}).get(
            "squashfs", "0" * 64))


def instance_left(api, stack, world, name: str) -> list[str]:
    left = []
    if api.get(f"/1.0/instances/{name}").status_code != 404:
        left.append("instance record")
    if world.volume(name).exists():
        left.append("volume")
    if world.lxc_dir(name).exists():
        left.append("lxc dir")
    return left


def test_failed_pull_for_launch_leaves_no_instance(api, stack, stream_server, world):
    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    body = {"name": world.name("bad"), "profiles": [world.profile],
            **pull_body(stream_server, alias="nosuch/1.0")}
    op = wait_op(api, api.post("/1.0/instances", json=body), ok=False)
    assert op["status"] == "Failure" and "nosuch/1.0" in op["err"], op
    assert instance_left(api, stack, world, body["name"]) == []
    stream_server.corrupt("20260102_0000", "squashfs")
    body["source"]["alias"] = "busybox/1.36"
    op = wait_op(api, api.post("/1.0/instances", json=body), ok=False)
    assert "Checksum mismatch" in op["err"], op
    assert instance_left(api, stack, world, body["name"]) == []
    assert_nothing_left(api, stack, fp)
    # an intact image of the same product: the name is free again and the launch works
    body["source"]["alias"] = "busybox/1.36/tarxz"
    try:
        wait_op(api, api.post("/1.0/instances", json=body))
        img = world.get(body["name"])["config"]["volatile.base_image"]
        assert img == stream_server.fingerprints["tarxz/20260101_0000"]["root.tar.xz"]
    finally:
        world.remove(body["name"])
        delete_image(api, stream_server.fingerprints["tarxz/20260101_0000"]["root.tar.xz"])


# -- the lxd protocol: from the test stack's own HTTPS listener -------------------------------


@pytest.fixture
def https_port(api):
    from .simplestreams import free_port

    before = api.get("/1.0").json()["metadata"]["config"]
    p = free_port()
    r = api.patch("/1.0", json={"config": {"core.https_address": f"127.0.0.1:{p}"}})
    assert r.status_code == 200, r.text
    yield p
    api.put("/1.0", json={"config": before})


@pytest.fixture
def project(api, uid):
    name = f"{uid}pj"
    r = api.post("/1.0/projects", json={"name": name, "config": {
        "features.images": "true", "features.profiles": "false"}})
    assert r.status_code in (200, 201), r.text
    yield name
    for fp in [i["fingerprint"] for i in api.get(
            "/1.0/images", params={"recursion": 1, "project": name}).json()["metadata"]]:
        r = api.delete(f"/1.0/images/{fp}", params={"project": name})
        if r.status_code == 202:
            wait_op(api, r)
    api.delete(f"/1.0/projects/{name}")


def _fetch_over_lxd(server: str, cert: str, alias: str, fp: str, work: Path) -> None:
    """services/image/fetch_lxd.py against a real server: resolve and download, the files
    hash to the fingerprint (unified: one file; split: the multipart export's two)."""
    import asyncio

    from services.image.fetch_lxd import FETCHER
    from shared.image import format as fmt
    from shared.messages.image import PullSource

    work.mkdir()
    seen: list[tuple[str, int, int]] = []

    async def progress(part: str, done: int, total: int) -> None:
        seen.append((part, done, total))

    async def run():
        src = PullSource(server=server, protocol="lxd", alias=alias, certificate=cert)
        remote = await FETCHER.resolve(src, "container")
        assert remote.fingerprint == fp
        return remote, await FETCHER.download(src, remote, work, progress)

    remote, got = asyncio.run(run())
    info = fmt.inspect_split(got.meta, got.rootfs) if got.rootfs else \
        fmt.inspect_unified(got.meta)
    assert info.fingerprint == fp and info.size == remote.size
    assert seen and seen[-1][1] == remote.size


def test_lxd_protocol_pulls_public_images_unified_and_split(api, stack, stream_server,
                                                            https_port, project, world, uid,
                                                            tmp_path):
    server = f"https://127.0.0.1:{https_port}"
    cert = api.get("/1.0").json()["metadata"]["environment"]["certificate"]
    split = stream_server.fingerprints["20260102_0000"]["squashfs"]
    wait_op(api, api.post("/1.0/images", json={
        **pull_body(stream_server, fingerprint=split), "public": True,
        "aliases": [{"name": f"{uid}-split"}]}))
    assert api.patch(f"/1.0/images/{world.fingerprint}", json={"public": True}
                     ).status_code == 200
    src = {"type": "image", "mode": "pull", "server": server, "protocol": "lxd",
           "certificate": cert}
    try:
        for alias, fp in ((world.image, world.fingerprint), (f"{uid}-split", split)):
            op = wait_op(api, api.post("/1.0/images", params={"project": project}, json={
                "source": {**src, "alias": alias}, "aliases": [{"name": "here"}]}))
            assert op["metadata"]["fingerprint"] == fp
            img = api.get(f"/1.0/images/{fp}", params={"project": project}).json()[
                "metadata"]
            assert img["update_source"] == {"alias": alias, "certificate": cert,
                                            "protocol": "lxd", "server": server,
                                            "image_type": ""}
            assert img["cached"] is False and [a["name"] for a in img["aliases"]] == ["here"]
            r = api.delete(f"/1.0/images/{fp}", params={"project": project})
            wait_op(api, r)
            r = api.delete("/1.0/images/aliases/here", params={"project": project})
        # the files themselves, fetched over the protocol (the API pulls above shared the
        # local files: the image is in the serving project of this same stack)
        _fetch_over_lxd(server, cert, world.image, world.fingerprint, tmp_path / "u")
        _fetch_over_lxd(server, cert, f"{uid}-split", split, tmp_path / "s")
    finally:
        delete_image(api, split)
        api.patch(f"/1.0/images/{world.fingerprint}", json={"public": False})
    # a private image is not there for an untrusted client; TLS failures are clear
    r = api.post("/1.0/images", params={"project": project},
                 json={"source": {**src, "alias": world.image}})
    assert r.status_code == 404 and world.image in error(r)[1], r.text
    r = api.post("/1.0/images", params={"project": project},
                 json={"source": {**src, "alias": world.image, "certificate": ""}})
    assert r.status_code == 400 and "self-signed" in error(r)[1], r.text
    r = api.post("/1.0/images", params={"project": project}, json={"source": {
        **src, "alias": world.image, "certificate": stream_server.cert_pem}})
    assert r.status_code == 400 and "not the pinned one" in error(r)[1], r.text
    assert_nothing_left(api, stack)


def test_full_disk_is_a_clear_error_and_leaves_no_file(stream_server, tmp_path):
    """A full temp dir (a 256 KiB tmpfs here: the stack's own dir is left alone) while a
    ~1 MB rootfs arrives: a 503 that says what to do, and no partial file."""
    import asyncio

    from shared.errors import Unavailable
    from shared.image import download

    item = stream_server.products[stream_server.product_name()]["versions"][
        "20260102_0000"]["items"]["root.squashfs"]
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                   check=True)
    try:
        with pytest.raises(Unavailable) as e:
            asyncio.run(download.fetch_file(
                download.join(stream_server.url, item["path"]), small / "root",
                sha256=item["sha256"], size=item["size"],
                certificate=stream_server.cert_pem))
        assert "No space left on device" in e.value.message
        assert "free some space" in e.value.message
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_image_service_killed_between_objects_and_record(api, stack, stream_server):
    """Killed after the files went into the ``images`` store but before the record: the
    next start removes those objects (the pull's journal), and a new pull works."""
    import signal

    fp = stream_server.fingerprints["20260102_0000"]["root.tar.xz"]
    _restart_image(stack, "image:after_blobs")
    try:
        r = api.post("/1.0/images", json=pull_body(stream_server, fingerprint=fp))
        assert r.status_code == 202, r.text
        proc = stack.procs["image"]
        proc.wait(60)
        assert proc.returncode == -signal.SIGKILL
        stack.procs.pop("image")
        assert {f"{fp}.meta", f"{fp}.rootfs"} <= image_objects(stack)
    finally:
        _restart_image(stack)
    op = api.get(f"{r.json()['operation']}/wait", params={"timeout": 60},
                 timeout=70).json()["metadata"]
    assert op["status"] == "Failure", op
    assert_nothing_left(api, stack, fp)
    try:
        wait_op(api, api.post("/1.0/images", json=pull_body(stream_server, fingerprint=fp)))
        assert {f"{fp}.meta", f"{fp}.rootfs"} <= image_objects(stack)
    finally:
        delete_image(api, fp)


def test_vm_image_copy_picks_the_vm_item(api, stream_server, ss_env, uid):
    """A version with container and VM items: ``lxc image copy --vm`` sends image_type
    virtual-machine and gets the disk-kvm.img image; without it, the container one."""
    fps = stream_server.add_version("20260103_0000", variant="mixed",
                                    rootfs=("squashfs", "disk-kvm.img"))
    vm, ct = fps["disk-kvm.img"], fps["squashfs"]
    try:
        stock(ss_env, "image", "copy", "ss:busybox/1.36/mixed", "local:", "--vm")
        img = images_by_fp(api)[vm]
        assert img["type"] == "virtual-machine"
        assert img["update_source"]["image_type"] == "virtual-machine"
        assert img["properties"]["type"] == "disk-kvm.img"
        stock(ss_env, "image", "copy", "ss:busybox/1.36/mixed", "local:")
        assert images_by_fp(api)[ct]["type"] == "container"
        # an instance create asks for its own type: a container from a VM-only alias is a
        # clear error, no instance left
        stream_server.add_version("20260103_0000", variant="vmonly", rootfs=("disk-kvm.img",))
        r = api.post("/1.0/images", json={
            **pull_body(stream_server, alias="busybox/1.36/vmonly",
                        image_type="container")})
        assert r.status_code == 404, r.text
    finally:
        delete_image(api, vm)
        delete_image(api, ct)


def test_cancelled_pull_leaves_nothing(api, stack, stream_server):
    """LXD's download operation may be cancelled (``lxc operation delete``): it ends
    Cancelled and nothing stays."""
    import time

    fp = stream_server.fingerprints["20260102_0000"]["squashfs"]
    # The server holds every image file after its first chunk until the cancel was sent:
    # the pull cannot finish first (it did on a quiet machine, when only throttled).
    stream_server.flowing.clear()
    try:
        r = api.post("/1.0/images", json=pull_body(stream_server, alias="busybox/1.36"))
        assert r.status_code == 202, r.text
        op_url = r.json()["operation"]
        assert r.json()["metadata"]["may_cancel"] is True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not pull_temp_dirs(stack):
            time.sleep(0.1)
        assert pull_temp_dirs(stack), "the pull never started downloading"
        assert api.delete(op_url).status_code == 200
    finally:
        stream_server.flowing.set()
    op = api.get(f"{op_url}/wait", params={"timeout": 30}).json()["metadata"]
    assert op["status"] == "Cancelled", op
    assert_nothing_left(api, stack, fp)


def test_lxc_launch_from_a_public_lxd_remote(api, stack, https_port, world, tmp_path):
    """``lxc remote add self https://... --public`` (the stack's own listener) and ``lxc
    launch self:<alias>``: the create pulls over the lxd protocol as an untrusted client."""
    conf = tmp_path / "conf"
    env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(conf)}
    assert api.patch(f"/1.0/images/{world.fingerprint}", json={"public": True}
                     ).status_code == 200
    try:
        stock(env, "remote", "add", "self", f"https://127.0.0.1:{https_port}", "--public",
              "--accept-certificate")
        name = world.name("lxd")
        stock(env, "init", f"self:{world.image}", name, "-p", world.profile)
        inst = world.get(name)
        assert inst["config"]["volatile.base_image"] == world.fingerprint
        # a private image: the untrusted pull does not see it
        api.patch(f"/1.0/images/{world.fingerprint}", json={"public": False})
        bad = world.name("lxd2")
        r = api.post("/1.0/instances", json={
            "name": bad, "profiles": [world.profile], "source": {
                "type": "image", "mode": "pull", "protocol": "lxd",
                "server": f"https://127.0.0.1:{https_port}", "alias": world.image,
                "certificate": api.get("/1.0").json()["metadata"]["environment"][
                    "certificate"]}})
        op = wait_op(api, r, ok=False)
        assert op["status"] == "Failure" and "not found" in op["err"], op
        assert api.get(f"/1.0/instances/{bad}").status_code == 404
    finally:
        api.patch(f"/1.0/images/{world.fingerprint}", json={"public": False})


def test_bad_pull_bodies_are_400(api, stream_server, uid):
    base = pull_body(stream_server, alias="busybox/1.36")
    for body, words in (
            ({**base, "aliases": "x"}, "aliases"),
            ({**base, "properties": ["x"]}, "properties"),
            ({**base, "profiles": "default"}, "profiles"),
            ({"source": {**base["source"], "server": ""}}, "server"),
            ({"source": {**base["source"], "alias": "", "fingerprint": ""}}, "alias"),
            ({"source": {**base["source"], "image_type": "vm"}}, "image_type"),
            ({"source": {**base["source"], "mode": "relay"}}, "mode")):
        r = api.post("/1.0/images", json=body)
        assert r.status_code == 400, (body, r.text)
        assert words in error(r)[1], (body, r.text)
    # an alias taken by another image: 409 before any download
    other = stream_server.fingerprints["tarxz/20260101_0000"]["root.tar.xz"]
    wait_op(api, api.post("/1.0/images", json={**pull_body(stream_server, fingerprint=other),
                                               "aliases": [{"name": f"{uid}-taken"}]}))
    try:
        hits = sum(stream_server.hits.values())
        r = api.post("/1.0/images", json={**base, "aliases": [{"name": f"{uid}-taken"}]})
        assert r.status_code == 409 and f"{uid}-taken" in error(r)[1], r.text
        assert not [k for k in stream_server.hits if not k.endswith(".json")
                    and "tarxz" not in k]
        assert sum(stream_server.hits.values()) - hits == 2  # index.json, images.json
    finally:
        delete_image(api, other)


# -- the simplestreams index cache (a launch from a cached remote image) ---------------------


@pytest.fixture
def btrfs_world(api, stack, busybox_tarball):
    from .world import make_world

    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        yield w


def _index_hits(srv: StreamServer) -> int:
    return sum(v for k, v in srv.hits.items() if k.endswith(".json"))


def _launch_body(srv: StreamServer, name: str, profile: str, alias: str) -> dict:
    return {"name": name, "profiles": [profile], **pull_body(srv, alias=alias)}


def test_cached_launch_reads_no_index_and_refresh_still_sees_new_versions(
        api, stack, stream_server, ss_env, btrfs_world, uid):
    """The image service keeps a server's parsed index (LXD: an hour): a second launch from
    the cached image asks the server nothing. A refresh and a name the cached index does
    not know still ask it, so a newer version or a new alias is seen at once."""
    world, srv = btrfs_world, stream_server
    fp = srv.fingerprints["20260102_0000"]["squashfs"]
    newer = None
    try:
        c1 = world.name("c1")
        stock(ss_env, "init", "ss:busybox/1.36", c1, "-p", world.profile)
        assert world.get(c1)["config"]["volatile.base_image"] == fp
        before, files = _index_hits(srv), sum(srv.hits.values()) - _index_hits(srv)
        # the second launch (through the API: the stock client reads the index itself)
        c2 = world.name("c2")
        wait_op(api, api.post("/1.0/instances", json=_launch_body(
            srv, c2, world.profile, "busybox/1.36")))
        assert world.get(c2)["config"]["volatile.base_image"] == fp
        assert _index_hits(srv) == before, srv.hits  # no index.json, no images.json
        assert sum(srv.hits.values()) - _index_hits(srv) == files  # no image file either
        # a newer version meanwhile: the refresh (warm cache) reads the server and takes it
        newer = srv.add_version("20260105_0000")["squashfs"]
        wait_op(api, api.post(f"/1.0/images/{fp}/refresh"))
        assert _index_hits(srv) > before
        have = images_by_fp(api)
        assert newer in have and fp not in have, sorted(have)
        # ... and the next launch by alias uses it (the refreshed image, from the cache)
        seen = _index_hits(srv)
        c3 = world.name("c3")
        wait_op(api, api.post("/1.0/instances", json=_launch_body(
            srv, c3, world.profile, "busybox/1.36")))
        assert world.get(c3)["config"]["volatile.base_image"] == newer
        assert _index_hits(srv) == seen
        # an alias added on the server after the index was cached is not a 404
        srv.add_version("20260105_0000", variant=f"v{uid}", rootfs=("squashfs",))
        c4 = world.name("c4")
        wait_op(api, api.post("/1.0/instances", json=_launch_body(
            srv, c4, world.profile, f"busybox/1.36/v{uid}")))
        got = world.get(c4)["config"]["volatile.base_image"]
        assert got == srv.fingerprints[f"v{uid}/20260105_0000"]["squashfs"]
    finally:
        for n in list(world.instances):
            world.remove(n)
        for f in (fp, newer, srv.fingerprints.get(f"v{uid}/20260105_0000", {}).get(
                "squashfs")):
            if f:
                delete_image(api, f)


def test_launch_from_a_registry_with_basic_auth_passes_the_credentials(
        api, stack, btrfs_world, tmp_path):
    """source.credentials of POST /1.0/instances reaches the image service's pull (an OCI
    registry's basic auth), and is neither stored nor logged."""
    from .oci_registry import build_busybox_image, start_registry

    user, password = "puller", f"pw-{os.urandom(6).hex()}"
    reg = start_registry(tmp_path / "registry", user, password)
    world = btrfs_world
    fp = None
    try:
        lay = build_busybox_image(tmp_path / "build", "echo", entrypoint=["/bin/sh", "-c"],
                                  cmd=["echo hi"], env=["PATH=/bin"])
        fp = reg.push(lay, "echo", "corral/auth:v1").split(":")[1]
        source = {"type": "image", "mode": "pull", "server": reg.server, "protocol": "oci",
                  "alias": "corral/auth:v1", "certificate": reg.certificate}
        # without them: the registry refuses, no instance left
        bad = world.name("noauth")
        op = wait_op(api, api.post("/1.0/instances", json={
            "name": bad, "profiles": [world.profile], "source": source}), ok=False)
        assert op["status"] == "Failure" and "credentials" in op["err"].lower(), op
        assert api.get(f"/1.0/instances/{bad}").status_code == 404
        # with them: pulled (cached) and created
        name = world.name("auth")
        wait_op(api, api.post("/1.0/instances", json={
            "name": name, "profiles": [world.profile],
            "source": {**source, "credentials": reg.credentials}}))
        assert world.get(name)["config"]["volatile.base_image"] == fp
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["cached"] is True
        assert password not in json.dumps(img)
        for log in (stack.dir / "logs").glob("*.log"):
            assert password not in log.read_text(errors="replace"), log
    finally:
        for n in list(world.instances):
            world.remove(n)
        if fp:
            delete_image(api, fp)
        reg.stop()
