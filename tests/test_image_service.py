"""The image service through HTTP, the `corral` CLI, the stock `lxc` client and the bus.

The busybox image is built once per module (deterministic); tiny unique images built here
cover everything that needs many images. Every image a test imports is deleted in a
finalizer, waiting for the delete operation, so the suite leaves the default project empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml

from shared import blobs
from shared.errors import BadRequest, NotFound
from shared.image.build import build_busybox
from shared.image.format import inspect_split, inspect_unified
from shared.messages.image import BlobRequest, ResolveRequest

from .stack import BIN, wait_for
from .world import lxc_conf, make_world

OCTET = {"Content-Type": "application/octet-stream"}


# -- helpers -------------------------------------------------------------------------------

def _tar(members: dict[str, bytes | None], gz: bool = True) -> bytes:
    """A tarball of files (bytes) and directories (None), fixed mtimes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _meta(tag: str) -> bytes:
    return (f"architecture: x86_64\ncreation_date: 1700000000\n"
            f"properties:\n  description: test {tag}\n  os: testos\n").encode()


def small_image(tag: str) -> bytes:
    """A unique, tiny unified image (metadata.yaml + rootfs/)."""
    return _tar({"metadata.yaml": _meta(tag), "rootfs": None, "rootfs/hello": tag.encode()})


def wait_op(api, r: httpx.Response) -> dict:
    assert r.status_code == 202, r.text
    op = api.get(f"{r.json()['operation']}/wait", params={"timeout": 60}).json()["metadata"]
    assert op["status"] in ("Success", "Failure"), op
    return op


def upload(api, data: bytes, **headers: str) -> dict:
    return wait_op(api, api.post("/1.0/images", content=data, headers={**OCTET, **headers}))


def corral(stack, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def lxc(stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(tmp_path / "lxcconf")}
    return subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=60)


def fingerprints(api) -> set[str]:
    return {i["fingerprint"] for i in api.get("/1.0/images", params={"recursion": 1})
            .json()["metadata"]}


async def objects(bus, bucket: str) -> set[str]:
    store = await blobs.bucket(bus, bucket)
    try:
        return {o.name for o in await store.list(ignore_deletes=True)}
    except Exception:  # nats-py raises when the bucket is empty
        return set()


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> tuple[Path, str]:
    path = build_busybox(tmp_path_factory.mktemp("crtimg"))
    return path, inspect_unified(path).fingerprint


@pytest.fixture
def cleanup(api):
    """Images (fingerprints) and aliases a test made; removed at the end, even on failure."""
    made: dict[str, list[str]] = {"images": [], "aliases": []}
    yield made
    for name in made["aliases"]:
        api.delete(f"/1.0/images/aliases/{name}")
    for fp in made["images"]:
        r = api.delete(f"/1.0/images/{fp}")
        if r.status_code == 202:
            api.get(f"{r.json()['operation']}/wait", params={"timeout": 60})


# -- import through HTTP, the CLI and lxc -------------------------------------------------

def test_import_raw_http_list_show_delete(api, bus, busybox, cleanup):
    path, fp = busybox
    assert fp not in fingerprints(api)
    op = upload(api, path.read_bytes(), **{"X-LXD-filename": path.name,
                                          "X-LXD-properties": "extra=yes&os=busybox"})
    assert op["status"] == "Success", op["err"]
    cleanup["images"].append(fp)
    assert op["description"] == "Downloading image"
    assert op["metadata"]["fingerprint"] == fp
    assert op["metadata"]["size"] == str(path.stat().st_size)
    # the session's store may hold other modules' images: this test checks its own
    assert f"/1.0/images/{fp}" in api.get("/1.0/images").json()["metadata"]
    r = api.get(f"/1.0/images/{fp[:10]}")
    assert r.status_code == 200 and r.headers.get("ETag")
    img = r.json()["metadata"]
    assert {"aliases", "architecture", "auto_update", "cached", "created_at", "expires_at",
            "filename", "fingerprint", "last_used_at", "properties", "public", "size", "type",
            "uploaded_at", "profiles", "project"} <= img.keys()
    assert img["fingerprint"] == fp and img["filename"] == path.name
    assert img["type"] == "container" and img["architecture"] == "x86_64"
    assert img["properties"]["extra"] == "yes" and img["profiles"] == ["default"]
    found = api.get("/1.0/images", params={"recursion": 1, "filter": "type eq container"})
    assert fp in [i["fingerprint"] for i in found.json()["metadata"]]
    assert {i["type"] for i in found.json()["metadata"]} == {"container"}
    none = api.get("/1.0/images", params={"recursion": 1, "filter": "type eq virtual-machine"})
    assert fp not in [i["fingerprint"] for i in none.json()["metadata"]]
    assert {i["type"] for i in none.json()["metadata"]} <= {"virtual-machine"}
    # Edit: PATCH merges properties, PUT replaces; a stale ETag is refused.
    etag = r.headers["ETag"]
    assert api.patch(f"/1.0/images/{fp}", json={"properties": {"k": "v"}}).status_code == 200
    assert api.get(f"/1.0/images/{fp}").json()["metadata"]["properties"]["extra"] == "yes"
    r = api.put(f"/1.0/images/{fp}", json={"properties": {"only": "this"}, "public": True},
                headers={"If-Match": etag})
    assert r.status_code == 412
    r = api.put(f"/1.0/images/{fp}", json={"properties": {"only": "this"}, "public": True})
    assert r.status_code == 200, r.text
    img = api.get(f"/1.0/images/{fp}").json()["metadata"]
    assert img["properties"] == {"only": "this"} and img["public"] is True
    # Delete: an operation; record, blobs and all are gone.
    op = wait_op(api, api.delete(f"/1.0/images/{fp}"))
    assert op["status"] == "Success", op["err"]
    assert api.get(f"/1.0/images/{fp}").status_code == 404
    assert api.delete(f"/1.0/images/{fp}").status_code == 404


async def test_delete_removes_blobs(aapi, bus, uid):
    data = small_image(uid)
    fp = hashlib.sha256(data).hexdigest()
    r = await aapi.post("/1.0/images", content=data, headers=OCTET)
    op = (await aapi.get(f"{r.json()['operation']}/wait")).json()["metadata"]
    try:
        assert op["status"] == "Success", op["err"]
        assert f"{fp}.meta" in await objects(bus, "images")
    finally:
        r = await aapi.delete(f"/1.0/images/{fp}")
        op = (await aapi.get(f"{r.json()['operation']}/wait")).json()["metadata"]
    assert op["status"] == "Success", op["err"]
    assert f"{fp}.meta" not in await objects(bus, "images")


def test_cli_import_export_alias(stack, api, busybox, cleanup, uid, tmp_path):
    path, fp = busybox
    cleanup["aliases"].append(uid)
    r = corral(stack, "image", "import", str(path), "--alias", uid)
    cleanup["images"].append(fp)
    assert r.returncode == 0, r.stderr
    assert fp in r.stdout
    r = corral(stack, "image", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    listed = [i for i in json.loads(r.stdout) if i["fingerprint"] == fp]  # others' too
    assert len(listed) == 1
    assert listed[0]["aliases"] == [{"name": uid, "description": ""}]
    r = corral(stack, "image", "show", uid)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["fingerprint"] == fp
    r = corral(stack, "image", "alias", "list", "--format", "json")
    assert {"name": uid, "target": fp, "type": "container", "description": ""} in json.loads(
        r.stdout)
    out = tmp_path / "out"
    r = corral(stack, "image", "export", uid, str(out))
    assert r.returncode == 0, r.stderr
    exported = out / f"{fp}.tar.xz"
    assert exported.read_bytes() == path.read_bytes()
    r = corral(stack, "image", "delete", uid)
    assert r.returncode == 0, r.stderr
    assert fp not in fingerprints(api)
    assert api.get(f"/1.0/images/aliases/{uid}").status_code == 404
    r = corral(stack, "image", "show", uid)
    assert r.returncode == 1 and r.stderr.startswith("Error:")


def test_cli_build_busybox_vm(stack, api, cleanup, uid):
    """`corral image build busybox --vm` builds LXD's split VM image and imports it."""
    r = corral(stack, "image", "build", "busybox", "--vm", "--alias", f"{uid}vm")
    assert r.returncode == 0, r.stderr
    cleanup["aliases"].append(f"{uid}vm")
    img = api.get(f"/1.0/images/aliases/{uid}vm").json()["metadata"]
    cleanup["images"].append(img["target"])
    assert img["type"] == "virtual-machine"
    assert api.get(f"/1.0/images/{img['target']}").json()["metadata"]["type"] == \
        "virtual-machine"


def test_cli_build_busybox(stack, api, busybox, cleanup, uid):
    _path, fp = busybox
    cleanup["aliases"].append(uid)
    cleanup["images"].append(fp)
    for _ in range(2):  # the second run finds the image and just points the alias again
        r = corral(stack, "image", "build", "busybox", "--alias", uid)
        assert r.returncode == 0, r.stderr
        assert fp in r.stdout
    assert api.get(f"/1.0/images/aliases/{uid}").json()["metadata"]["target"] == fp


def test_stock_lxc_client(stack, api, busybox, cleanup, uid, tmp_path):
    path, fp = busybox
    cleanup["images"].append(fp)
    cleanup["aliases"].append(uid)
    r = lxc(stack, tmp_path, "image", "import", str(path), "--alias", uid)
    assert r.returncode == 0, r.stderr
    assert fp in r.stdout
    r = lxc(stack, tmp_path, "image", "list", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert uid in r.stdout and fp[:12] in r.stdout
    r = lxc(stack, tmp_path, "image", "alias", "list", "--format", "csv")
    assert r.returncode == 0 and uid in r.stdout and fp[:12] in r.stdout, r.stderr
    r = lxc(stack, tmp_path, "image", "show", uid)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["properties"]["os"] == "busybox"
    out = tmp_path / "exp"
    out.mkdir()
    r = lxc(stack, tmp_path, "image", "export", uid, str(out))
    assert r.returncode == 0, r.stderr
    assert (out / f"{fp}.tar.xz").read_bytes() == path.read_bytes()
    r = lxc(stack, tmp_path, "image", "delete", uid)
    assert r.returncode == 0, r.stderr
    assert fp not in fingerprints(api)


# -- lookups, aliases, errors --------------------------------------------------------------

def test_prefix_lookup_and_ambiguous_prefix(api, cleanup, uid):
    by_first: dict[str, bytes] = {}
    n = 0
    while True:  # two images whose fingerprints share the first hex digit
        data = small_image(f"{uid}-{n}")
        n += 1
        first = hashlib.sha256(data).hexdigest()[0]
        if first in by_first:
            pair = [by_first[first], data]
            break
        by_first[first] = data
    fps = []
    for data in pair:
        op = upload(api, data)
        assert op["status"] == "Success", op["err"]
        fps.append(op["metadata"]["fingerprint"])
        cleanup["images"].append(fps[-1])
    r = api.get(f"/1.0/images/{first}")
    assert r.status_code == 400 and "More than one image matches" in r.json()["error"]
    common = next(i for i, (a, b) in enumerate(zip(*fps, strict=True)) if a != b)
    r = api.get(f"/1.0/images/{fps[0][:common + 1]}")
    assert r.status_code == 200 and r.json()["metadata"]["fingerprint"] == fps[0]
    r = api.get("/1.0/images/" + "f" * 64)
    assert r.status_code == 404 and r.json()["error"] == "Image not found"
    assert api.get("/1.0/images/not-hex").status_code == 404


def test_alias_crud_and_errors(api, cleanup, uid):
    fps = []
    for tag in ("a", "b"):
        op = upload(api, small_image(uid + tag))
        fps.append(op["metadata"]["fingerprint"])
        cleanup["images"].append(fps[-1])
    name, other = f"{uid}-x", f"{uid}-y"
    cleanup["aliases"] += [name, other]
    r = api.post("/1.0/images/aliases", json={"name": name, "target": fps[0][:12],
                                              "description": "first"})
    assert r.status_code in (200, 201), r.text
    r = api.get(f"/1.0/images/aliases/{name}")
    assert r.json()["metadata"] == {"name": name, "description": "first", "target": fps[0],
                                    "type": "container"}
    etag = r.headers["ETag"]
    assert f"/1.0/images/aliases/{name}" in api.get("/1.0/images/aliases").json()["metadata"]
    r = api.post("/1.0/images/aliases", json={"name": name, "target": fps[1]})
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    r = api.post("/1.0/images/aliases", json={"name": other, "target": "0" * 64})
    assert r.status_code == 404
    r = api.post("/1.0/images/aliases", json={"name": other})
    assert r.status_code == 400
    r = api.patch(f"/1.0/images/aliases/{name}", json={"target": fps[1]},
                  headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    r = api.put(f"/1.0/images/aliases/{name}", json={"description": "x"})
    assert r.status_code == 400  # PUT needs the target
    r = api.put(f"/1.0/images/aliases/{name}", json={"target": fps[1], "description": "x"},
                headers={"If-Match": etag})
    assert r.status_code == 412
    img = api.get(f"/1.0/images/{fps[1]}").json()["metadata"]
    assert img["aliases"] == [{"name": name, "description": "first"}]
    r = api.post(f"/1.0/images/aliases/{name}", json={"name": other})
    assert r.status_code in (200, 201), r.text
    assert api.get(f"/1.0/images/aliases/{name}").status_code == 404
    assert api.get(f"/1.0/images/aliases/{other}").json()["metadata"]["target"] == fps[1]
    assert api.delete(f"/1.0/images/aliases/{other}").status_code == 200
    assert api.delete(f"/1.0/images/aliases/{other}").status_code == 404


def test_alias_names_with_slashes(stack, api, cleanup, uid, tmp_path):
    """Image servers name images ``busybox/1.36`` (LXD takes any non-empty name; its client
    sends the slash as %2F): create, get, list, rename and delete one with the stock client
    and the REST API (raw slashes too); names no URL or CLI could reach are a 400."""
    op = upload(api, small_image(uid + "slash"))
    fp = op["metadata"]["fingerprint"]
    cleanup["images"].append(fp)
    name, new = f"{uid}/1.36", f"{uid}/1.36/default"
    cleanup["aliases"] += [name, new]
    r = lxc(stack, tmp_path, "image", "alias", "create", name, fp[:12])
    assert r.returncode == 0, r.stderr
    r = lxc(stack, tmp_path, "image", "alias", "list", "--format", "csv")
    assert r.returncode == 0 and f"{name},{fp[:12]}" in r.stdout, (r.stdout, r.stderr)
    r = lxc(stack, tmp_path, "image", "info", name)  # the client's alias lookup: %2F
    assert r.returncode == 0 and f"Fingerprint: {fp}" in r.stdout, (r.stdout, r.stderr)
    for path in (f"/1.0/images/aliases/{name}",
                 f"/1.0/images/aliases/{name.replace('/', '%2F')}"):
        got = api.get(path)
        assert got.status_code == 200, (path, got.text)
        assert got.json()["metadata"]["name"] == name and \
            got.json()["metadata"]["target"] == fp
    listed = api.get("/1.0/images/aliases").json()["metadata"]
    assert f"/1.0/images/aliases/{uid}%2F1.36" in listed  # escaped, as LXD's URLs
    assert api.get(f"/1.0/images/{fp}").json()["metadata"]["aliases"] == [
        {"name": name, "description": ""}]
    r = lxc(stack, tmp_path, "image", "alias", "rename", name, new)
    assert r.returncode == 0, r.stderr
    assert api.get(f"/1.0/images/aliases/{name}").status_code == 404
    assert api.get(f"/1.0/images/aliases/{new}").json()["metadata"]["target"] == fp
    # a name that only extends another's path is its own alias, not a sub-resource
    assert api.get(f"/1.0/images/aliases/{new}/amd64").status_code == 404
    for bad in (f"/{uid}", f"{uid}/", f"{uid}//x", f"{uid}/../x", f"{uid}/./x",
                f"{uid} x", f"{uid}/\tx", "x" * 256):
        r = api.post("/1.0/images/aliases", json={"name": bad, "target": fp})
        assert r.status_code == 400 and "Invalid alias name" in r.json()["error"], (bad,
                                                                                   r.text)
        r = api.post(f"/1.0/images/aliases/{new}", json={"name": bad})
        assert r.status_code == 400 and "Invalid alias name" in r.json()["error"], (bad,
                                                                                   r.text)
    r = api.post(f"/1.0/images/aliases/{new}", json={"name": ""})
    assert r.status_code == 400 and "No alias name" in r.json()["error"], r.text
    assert api.get(f"/1.0/images/aliases/{new}").status_code == 200  # unchanged
    r = lxc(stack, tmp_path, "image", "alias", "delete", new)
    assert r.returncode == 0, r.stderr
    assert api.get(f"/1.0/images/aliases/{new}").status_code == 404
    assert api.get(f"/1.0/images/{fp}").json()["metadata"]["aliases"] == []


def test_bad_uploads_leave_nothing(api, busybox):
    path, fp = busybox
    cases = [
        (b"this is not a tarball at all" * 10, {}, "not an image"),
        (_tar({"rootfs": None, "rootfs/x": b"x"}), {}, "has no metadata.yaml"),
        (path.read_bytes(), {"X-LXD-fingerprint": "0" * 64}, "Fingerprints do not match"),
    ]
    for data, headers, message in cases:
        op = upload(api, data, **headers)
        assert op["status"] == "Failure" and message in op["err"], op
        assert hashlib.sha256(data).hexdigest() not in fingerprints(api)
    assert fp not in fingerprints(api)


async def test_bad_uploads_leave_no_objects(aapi, bus, uid):
    images_before = await objects(bus, "images")
    data = _tar({"rootfs": None, "rootfs/x": uid.encode()})
    r = await aapi.post("/1.0/images", content=data, headers=OCTET)
    op = (await aapi.get(f"{r.json()['operation']}/wait")).json()["metadata"]
    assert op["status"] == "Failure"
    assert await objects(bus, "images") == images_before
    assert not {o for o in await objects(bus, "transfers") if o.startswith("upload-")}


def test_duplicate_import_and_json_sources(api, cleanup, uid):
    data = small_image(uid)
    op = upload(api, data)
    assert op["status"] == "Success", op["err"]
    cleanup["images"].append(op["metadata"]["fingerprint"])
    op = upload(api, data)
    assert op["status"] == "Failure"
    assert op["err"] == "Image with same fingerprint already exists"
    # (pulls from image servers: tests/test_image_pull.py)
    r = api.post("/1.0/images", json={"source": {"type": "image", "mode": "push",
                                                 "server": "https://x", "alias": "a"}})
    assert r.status_code == 400 and "Push mode is not supported" in r.json()["error"]
    r = api.post("/1.0/images", json={"source": {"type": "url", "url": "https://x/i"}})
    assert r.status_code == 400 and "URL" in r.json()["error"]


def test_split_image_multipart(api, stack, cleanup, uid, tmp_path):
    meta = tmp_path / "meta.tar.gz"
    rootfs = tmp_path / "rootfs.tar"
    meta.write_bytes(_tar({"metadata.yaml": _meta(uid)}))
    rootfs.write_bytes(_tar({"bin": None, "bin/hello": uid.encode()}, gz=False))
    fp = inspect_split(meta, rootfs).fingerprint
    with open(meta, "rb") as m, open(rootfs, "rb") as rf:
        r = api.post("/1.0/images", files={"metadata": (meta.name, m),
                                           "rootfs": (rootfs.name, rf)})
    op = wait_op(api, r)
    assert op["status"] == "Success", op["err"]
    cleanup["images"].append(fp)
    assert op["metadata"]["fingerprint"] == fp
    img = api.get(f"/1.0/images/{fp}").json()["metadata"]
    assert img["size"] == meta.stat().st_size + rootfs.stat().st_size
    assert img["filename"] == rootfs.name
    out = tmp_path / "out"
    r = corral(stack, "image", "export", fp[:16], str(out))
    assert r.returncode == 0, r.stderr
    assert (out / f"meta-{fp}.tar.gz").read_bytes() == meta.read_bytes()
    assert (out / f"{fp}.tar").read_bytes() == rootfs.read_bytes()
    r = api.post("/1.0/images", content=b"--x\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400


# -- the bus contract ----------------------------------------------------------------------

async def test_resolve_and_blob_over_bus(aapi, bus, uid):
    data = small_image(uid)
    fp = hashlib.sha256(data).hexdigest()
    r = await aapi.post("/1.0/images", content=data, headers=OCTET)
    op = (await aapi.get(f"{r.json()['operation']}/wait")).json()["metadata"]
    assert op["status"] == "Success", op["err"]
    try:
        r = await aapi.post("/1.0/images/aliases", json={"name": uid, "target": fp})
        assert r.status_code in (200, 201), r.text
        img = (await bus.request("image", "resolve", ResolveRequest(alias=uid))).metadata
        assert img["fingerprint"] == fp and img["aliases"] == [{"name": uid, "description": ""}]
        assert img["last_used_at"] != "0001-01-01T00:00:00Z"
        img = (await bus.request("image", "resolve",
                                 ResolveRequest(fingerprint=fp[:8], for_create=False))).metadata
        assert img["fingerprint"] == fp
        with pytest.raises(BadRequest, match="virtual-machine"):
            await bus.request("image", "resolve", ResolveRequest(
                alias=uid, instance_type="virtual-machine"))
        with pytest.raises(NotFound, match="Image not found"):
            await bus.request("image", "resolve", ResolveRequest(alias=uid + "-none"))
        with pytest.raises(NotFound, match="Image not found"):
            await bus.request("image", "resolve", ResolveRequest(fingerprint="f" * 64))
        blob = (await bus.request("image", "blob", BlobRequest(fingerprint=fp))).metadata
        assert blob == {"bucket": "images", "objects": {"meta": f"{fp}.meta", "rootfs": None},
                        "type": "container", "fingerprint": fp}
        store = await blobs.bucket(bus, "images")
        assert await blobs.get_bytes(store, f"{fp}.meta") == data
    finally:
        r = await aapi.delete(f"/1.0/images/{fp}")
        await aapi.get(f"{r.json()['operation']}/wait")
    assert (await aapi.get(f"/1.0/images/aliases/{uid}")).status_code == 404


def test_delete_fails_cleanly_without_storage(stack, api, cleanup, uid):
    op = upload(api, small_image(uid))
    fp = op["metadata"]["fingerprint"]
    cleanup["images"].append(fp)
    stack.stop("storage")
    try:
        op = wait_op(api, api.delete(f"/1.0/images/{fp}"))
        assert op["status"] == "Failure" and "storage service" in op["err"], op
        assert api.get(f"/1.0/images/{fp}").status_code == 200
    finally:
        stack.start("storage")
        wait_for(lambda: api.get("/1.0/storage-pools").status_code == 200, 30,
                 what="the storage service")


# -- images whose members have absolute names -----------------------------------------------

def _absolute_names(src: Path, dest: Path) -> Path:
    """The same image with every member written as ``/rootfs/...`` (as some builders do),
    plus a hard link whose target is absolute too."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for ti in tin:
            data = tin.extractfile(ti) if ti.isreg() else None
            ti.name = "/" + ti.name.removeprefix("./")
            tout.addfile(ti, data)
        hard = tarfile.TarInfo("/rootfs/etc/inittab.hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "/rootfs/etc/inittab"
        tout.addfile(hard)
    return dest


def test_absolute_member_names_import_and_launch(stack, api, busybox_tarball, tmp_path):
    """LXD accepts tarballs with /rootfs/etc/inittab names; so does Corral, end to end:
    HTTP import, stock `lxc launch`, templates rendered, files where a relative image puts
    them."""
    img = _absolute_names(busybox_tarball, tmp_path / "abs.tar.gz")
    with make_world(api, stack, img, network=False, pool_driver="dir") as w:
        name = w.name("abs")
        r = lxc(stack, tmp_path, "launch", w.image, name, "-p", w.profile)
        assert r.returncode == 0, r.stderr
        assert w.live(name)["status"] == "Running"
        r = lxc(stack, tmp_path, "exec", name, "--", "cat", "/etc/hostname")
        assert r.returncode == 0 and r.stdout.strip() == name, (r.stdout, r.stderr)
        r = lxc(stack, tmp_path, "exec", name, "--", "cmp", "/etc/inittab",
                "/etc/inittab.hard")
        assert r.returncode == 0, (r.stdout, r.stderr)
        rootfs = w.volume(name) / "rootfs"
        assert (rootfs / "bin/busybox").is_file() and not (w.volume(name) / "abs").exists()
