"""Serving images to other servers (issue 11, "Serve"): public images to untrusted clients
over LXD's protocol, one-time secrets for private images, and the public images as a
simplestreams tree on the HTTPS listener, read by the stock ``lxc`` client.

The images are made here from the session's busybox tarball, each carrying the module's
prefix in its metadata (so their fingerprints are this module's own): unified (xz, and gz
as a newer version of the same system), split with a squashfs rootfs, split with a
``.tar.gz`` rootfs, a small VM image (qcow2), and a private one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.image import streams_tree
from shared.image.format import normalize_architecture
from shared.image.simplestreams import Catalog

from .stack import private_stack, socket_client, wait_for
from .test_https import free_port, https, make_client_cert
from .world import lxc_conf, make_world, wait_op

pytestmark = pytest.mark.root


# -- images made for this module ---------------------------------------------------------

def _unpack(tarball: Path, into: Path) -> None:
    into.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(into), "-xf", str(tarball)], check=True)


def _retag(tree: Path, prefix: str, **props: str) -> None:
    """Give the image's metadata.yaml this module's prefix (a fingerprint of its own)."""
    meta = tree / "metadata.yaml"
    doc = yaml.safe_load(meta.read_text())
    doc["properties"] = {**doc.get("properties", {}), "serial": prefix, **props}
    meta.write_text(yaml.safe_dump(doc))


def _tar(out: Path, tree: Path, members: list[str], flag: str) -> Path:
    subprocess.run(["tar", "-C", str(tree), flag, "-cf", str(out), *members], check=True)
    return out


def make_images(busybox: Path, work: Path, prefix: str) -> dict[str, dict[str, Path]]:
    """{name: {"meta": path[, "rootfs": path]}} for each kind of image this module serves."""
    tree = work / "tree"
    _unpack(busybox, tree)
    _retag(tree, prefix)
    both = ["metadata.yaml", "templates", "rootfs"]
    out: dict[str, dict[str, Path]] = {
        "unified": {"meta": _tar(work / "unified.tar.xz", tree, both, "-J")}}
    meta = _tar(work / "meta.tar.xz", tree, ["metadata.yaml", "templates"], "-J")
    squash = work / "root.squashfs"
    subprocess.run(["mksquashfs", str(tree / "rootfs"), str(squash), "-noappend", "-quiet",
                    "-comp", "gzip"], check=True, capture_output=True)
    out["squashfs"] = {"meta": meta, "rootfs": squash}
    out["targz"] = {"meta": meta, "rootfs": _tar(work / "root.tar.gz", tree / "rootfs",
                                                 ["."], "-z")}
    private = work / "private"
    shutil.copytree(tree, private, symlinks=True)
    _retag(private, prefix, description="private")
    out["private"] = {"meta": _tar(work / "private.tar.xz", private, both, "-J")}
    newer = work / "newer"
    shutil.copytree(tree, newer, symlinks=True)
    _retag(newer, prefix, build="2")  # same os/release/variant: a newer version
    out["newer"] = {"meta": _tar(work / "newer.tar.gz", newer, both, "-z")}
    vm = work / "vm"
    vm.mkdir()
    doc = yaml.safe_load((tree / "metadata.yaml").read_text())
    doc["properties"] = {**doc["properties"], "os": "busyvm"}
    doc.pop("templates", None)
    (vm / "metadata.yaml").write_text(yaml.safe_dump(doc))
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    out["vm"] = {"meta": _tar(work / "vm-meta.tar.xz", vm, ["metadata.yaml"], "-J"),
                 "rootfs": disk}
    return out


def upload(api: httpx.Client, files: dict[str, Path], public: bool) -> str:
    headers = {"X-LXD-public": "true" if public else "false"}
    if "rootfs" not in files:
        r = api.post("/1.0/images", content=files["meta"].read_bytes(), headers={
            **headers, "Content-Type": "application/octet-stream",
            "X-LXD-filename": files["meta"].name})
    else:
        part = "rootfs.img" if files["rootfs"].suffix == ".qcow2" else "rootfs"
        r = api.post("/1.0/images", headers=headers, files={
            "metadata": (files["meta"].name, files["meta"].read_bytes(),
                         "application/octet-stream"),
            part: (files["rootfs"].name, files["rootfs"].read_bytes(),
                   "application/octet-stream")})
    return wait_op(api, r)["metadata"]["fingerprint"]


def sha256(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


class Served:
    """What the module serves: the HTTPS port, the images' fingerprints, their aliases."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port = port
        self.prefix = prefix
        self.fps: dict[str, str] = {}
        self.aliases: dict[str, str] = {}  # kind -> alias name

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(api, stack, busybox_tarball, tmp_path_factory):
    prefix = "s" + uuid.uuid4().hex[:6]
    before = api.get("/1.0").json()["metadata"]["config"].get("core.https_address", "")
    port = free_port()
    assert api.patch("/1.0", json={"config": {"core.https_address": f"127.0.0.1:{port}"}}
                     ).status_code == 200
    s = Served(port, prefix)
    try:
        made = make_images(busybox_tarball, tmp_path_factory.mktemp("serve"), prefix)
        for kind in ("unified", "squashfs", "targz", "private", "vm"):
            s.fps[kind] = upload(api, made[kind], public=kind != "private")
            s.aliases[kind] = f"{prefix}-{kind}"
            r = api.post("/1.0/images/aliases", json={"name": s.aliases[kind],
                                                      "target": s.fps[kind]})
            assert r.status_code in (200, 201), r.text
        time.sleep(1.1)  # a later upload second: the newer serial of busybox's product
        s.fps["newer"] = upload(api, made["newer"], public=True)  # no alias: a version
        yield s
    finally:
        for kind in s.aliases:
            api.delete(f"/1.0/images/aliases/{s.aliases[kind]}")
        for fp in s.fps.values():
            r = api.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(api, r, ok=False)
        api.patch("/1.0", json={"config": {"core.https_address": before}})


def client_env(stack, tmp_path: Path, name: str) -> dict[str, str]:
    conf = tmp_path / name
    # lxc makes its config directory only on some first runs (not for every remote add):
    # the test does not depend on which
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**stack.env, "LXD_CONF": str(conf)}
    env.pop("LXD_DIR", None)
    return env


def lxc(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def add_simplestreams_remote(env: dict[str, str], name: str, url: str, cert: str) -> None:
    """A simplestreams remote whose server certificate is pinned (servercerts/<name>.crt)."""
    certs = Path(env["LXD_CONF"]) / "servercerts"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / f"{name}.crt").write_text(cert)
    lxc(env, "remote", "add", name, url, "--protocol", "simplestreams")


def server_cert(api: httpx.Client) -> str:
    return api.get("/1.0").json()["metadata"]["environment"]["certificate"]


# -- the simplestreams tree --------------------------------------------------------------

def test_tree_shapes_and_files_match_their_checksums(api, served):
    """index.json -> images.json -> items, read without a certificate; every file's bytes
    match the sha256 and size the tree gives, and the combined fingerprints are the
    images' own; private images are not there."""
    with https(served.port) as c:
        index = c.get("/streams/v1/index.json")
        assert index.status_code == 200, index.text
        entry = index.json()["index"]["images"]
        assert entry["datatype"] == "image-downloads" and entry["format"] == "products:1.0"
        products = c.get("/" + entry["path"]).json()
        assert products["format"] == "products:1.0"
        # the pull side's parser (LXD's rules) reads each alias as the image it names here
        catalog = Catalog.from_documents([c.get("/" + entry["path"]).json()],
                                         normalize_architecture(os.uname().machine))
        for kind in ("unified", "squashfs", "targz", "vm"):
            assert catalog.find(alias=served.aliases[kind]).fingerprint == served.fps[kind]
        assert catalog.find(fingerprint=served.fps["newer"]).type == "container"
        assert set(entry["products"]) == set(products["products"])
        seen: dict[str, dict[str, Any]] = {}
        for pname, product in products["products"].items():
            for serial, version in product["versions"].items():
                assert serial[:8].isdigit()
                for item in version["items"].values():
                    body = c.get("/" + item["path"])
                    assert body.status_code == 200, item
                    assert sha256(body.content) == item["sha256"]
                    assert len(body.content) == item["size"]
                    item["_bytes"] = body.content
                seen.update({f"{pname}@{serial}": version["items"]})
        fps = {}
        for items in seen.values():
            if "lxd_combined.tar.gz" in items:
                fps[items["lxd_combined.tar.gz"]["sha256"]] = "unified"
            meta = items.get("lxd.tar.xz")
            for root, field in (("squashfs", "combined_squashfs_sha256"),
                                ("root.tar.xz", "combined_rootxz_sha256"),
                                ("disk-kvm.img", "combined_disk-kvm-img_sha256")):
                if root in items:
                    fp = meta[field]
                    assert sha256(meta["_bytes"], items[root]["_bytes"]) == fp
                    fps[fp] = root
        for kind in ("unified", "newer", "squashfs", "targz", "vm"):
            assert served.fps[kind] in fps, kind
        assert fps[served.fps["squashfs"]] == "squashfs"
        assert fps[served.fps["targz"]] == "root.tar.xz"  # LXD's only tarball root type
        assert fps[served.fps["vm"]] == "disk-kvm.img"
        assert served.fps["private"] not in fps
        assert c.get(f"/images/{served.fps['private']}/lxd_combined.tar.xz"
                     ).status_code == 404
        assert c.get("/images/nothing/here").status_code == 404
    # the unix socket serves the same tree
    assert api.get("/streams/v1/index.json").json()["index"]["images"]["products"] == \
        entry["products"]


def test_stock_client_lists_and_shows_the_tree(api, stack, served, tmp_path):
    env = client_env(stack, tmp_path, "ss")
    add_simplestreams_remote(env, "corral", served.url, server_cert(api))
    rows = json.loads(lxc(env, "image", "list", "corral:", "--format", "json").stdout)
    listed = {r["fingerprint"]: r for r in rows}
    for kind in ("unified", "newer", "squashfs", "targz", "vm"):
        assert served.fps[kind] in listed, (kind, sorted(listed))
    assert served.fps["private"] not in listed
    assert listed[served.fps["vm"]]["type"] == "virtual-machine"
    assert listed[served.fps["squashfs"]]["type"] == "container"
    for kind in ("unified", "squashfs", "targz", "vm"):
        info = lxc(env, "image", "info", f"corral:{served.aliases[kind]}").stdout
        assert f"Fingerprint: {served.fps[kind]}" in info, (kind, info)
    # the newer upload of the same system is the newest version of its product; the older
    # one keeps its alias all the same
    info = lxc(env, "image", "info", f"corral:{served.fps['newer'][:16]}").stdout
    assert "Public: yes" in info
    aliases = lxc(env, "image", "alias", "list", "corral:", "--format", "csv").stdout
    assert served.aliases["squashfs"] in aliases and served.aliases["private"] not in aliases
    r = lxc(env, "image", "info", f"corral:{served.aliases['private']}", check=False)
    assert r.returncode != 0


def test_stock_client_exports_from_the_tree(api, stack, served, tmp_path):
    """``lxc image export`` downloads the items (checking sha256) and names the files as
    the tree's paths do."""
    env = client_env(stack, tmp_path, "ssx")
    add_simplestreams_remote(env, "corral", served.url, server_cert(api))
    for kind in ("squashfs", "unified"):
        out = tmp_path / f"x-{kind}"
        out.mkdir()
        lxc(env, "image", "export", f"corral:{served.aliases[kind]}", str(out) + "/")
        files = sorted(out.iterdir())
        blob = b"".join(p.read_bytes() for p in sorted(files, key=lambda p: (
            not p.name.startswith("meta"), p.name)))
        assert sha256(blob) == served.fps[kind], (kind, [p.name for p in files])


# -- LXD's protocol, untrusted -----------------------------------------------------------

def test_untrusted_client_reads_public_images_only(api, stack, served, tmp_path):
    env = client_env(stack, tmp_path, "pub")
    lxc(env, "remote", "add", "pub", served.url, "--public", "--accept-certificate")
    rows = json.loads(lxc(env, "image", "list", "pub:", "--format", "json").stdout)
    fps = {r["fingerprint"] for r in rows}
    assert {served.fps[k] for k in ("unified", "squashfs", "targz", "vm")} <= fps
    assert served.fps["private"] not in fps and all(r["public"] for r in rows)
    info = lxc(env, "image", "info", f"pub:{served.aliases['squashfs']}").stdout
    assert f"Fingerprint: {served.fps['squashfs']}" in info
    for kind in ("unified", "squashfs"):  # inline and multipart exports
        out = tmp_path / f"pub-{kind}"
        out.mkdir()
        lxc(env, "image", "export", f"pub:{served.aliases[kind]}", str(out) + "/")
        blob = b"".join(p.read_bytes() for p in sorted(out.iterdir(), key=lambda p: (
            not p.name.startswith("meta"), p.name)))
        assert sha256(blob) == served.fps[kind]
    assert lxc(env, "image", "info", f"pub:{served.aliases['private']}",
               check=False).returncode != 0
    with https(served.port) as c:
        private = served.fps["private"]
        for path in (f"/1.0/images/{private}", f"/1.0/images/{private}/export",
                     f"/1.0/images/{private[:12]}", f"/1.0/images/aliases/"
                     f"{served.aliases['private']}"):
            r = c.get(path)
            assert r.status_code == 404 and "not found" in r.json()["error"].lower(), path
        r = c.get(f"/1.0/images/{served.fps['unified']}/export")
        assert r.status_code == 200 and sha256(r.content) == served.fps["unified"]
        assert r.headers["Content-Disposition"] == \
            f"inline;filename={served.fps['unified']}.tar.xz"
        r = c.get(f"/1.0/images/{served.fps['squashfs']}/export")
        assert r.headers["Content-Type"].startswith("multipart/form-data")
        assert sha256(*_parts(r.content, r.headers["Content-Type"])) == served.fps["squashfs"]
        # public images of other projects are not for untrusted clients
        assert c.get(f"/1.0/images/{served.fps['unified']}?project=nope").status_code == 404
        assert c.post(f"/1.0/images/{served.fps['unified']}/secret").status_code == 403


# -- secrets ------------------------------------------------------------------------------

def _secret(api: httpx.Client, fp: str, name: str = "") -> dict[str, Any]:
    r = api.post(f"/1.0/images/{name or fp}/secret")
    assert r.status_code == 202, r.text
    op = r.json()["metadata"]
    assert op["class"] == "token" and op["status"] == "Running"
    assert op["metadata"]["fingerprint"] == fp and len(op["metadata"]["secret"]) >= 32
    assert op["resources"]["images"] == [f"/1.0/images/{fp}"]
    return op


def test_secret_opens_a_private_image_once(api, served, tmp_path):
    fp = served.fps["private"]
    op = _secret(api, fp, fp[:12])  # a prefix names the image; the token holds the full fp
    secret = op["metadata"]["secret"]
    crt, key, _ = make_client_cert(tmp_path / "stranger")
    with https(served.port, (crt, key)) as c:
        assert c.get(f"/1.0/images/{fp}", params={"secret": "0" * 64}).status_code == 404
        assert c.get(f"/1.0/images/{served.fps['unified']}",  # another image's secret
                     params={"secret": secret}).status_code == 404
        r = c.get(f"/1.0/images/{fp}", params={"secret": secret})
        assert r.status_code == 200 and r.json()["metadata"]["fingerprint"] == fp
        # the first use ends the token, as LXD's
        done = api.get(f"/1.0/operations/{op['id']}").json()["metadata"]
        assert done["status"] == "Cancelled"
        assert c.get(f"/1.0/images/{fp}", params={"secret": secret}).status_code == 404
        r = c.get(f"/1.0/images/{fp}/export", params={"secret": secret})
        assert r.status_code == 200 and sha256(r.content) == fp
        assert c.get(f"/1.0/images/{fp}/export", params={"secret": secret}
                     ).status_code == 404
        assert c.get(f"/1.0/images/{fp}").status_code == 404  # no secret, no image
    # a secret cancelled before use opens nothing
    op2 = _secret(api, fp)
    assert api.delete(f"/1.0/operations/{op2['id']}").status_code == 200
    wait_for(lambda: api.get(f"/1.0/operations/{op2['id']}").json()["metadata"]["status"]
             == "Cancelled", 10)
    with https(served.port) as c:
        assert c.get(f"/1.0/images/{fp}/export",
                     params={"secret": op2["metadata"]["secret"]}).status_code == 404
    assert api.post("/1.0/images/0123456789ab/secret").status_code == 404


# -- a second Corral pulls from this one ----------------------------------------------------

@pytest.fixture(scope="module")
def other(request):
    """A second, separate Corral (its own nats-server and state dir): the puller."""
    with private_stack(request, "serve") as s:
        yield s


@pytest.fixture(scope="module")
def oapi(other):
    with socket_client(other, timeout=60) as client:
        yield client


def _parts(body: bytes, ctype: str) -> list[bytes]:
    """The bodies of a multipart export (metadata, then rootfs)."""
    boundary = b"--" + ctype.split("boundary=", 1)[1].strip('"').encode()
    return [chunk.partition(b"\r\n\r\n")[2][:-2]
            for chunk in body.split(boundary)[1:-1]]


def _pulled(oapi: httpx.Client, fp: str) -> dict[str, Any]:
    r = oapi.get(f"/1.0/images/{fp}")
    assert r.status_code == 200, r.text
    blob = oapi.get(f"/1.0/images/{fp}/export")
    assert blob.status_code == 200
    ctype = blob.headers["Content-Type"]
    data = b"".join(_parts(blob.content, ctype)) if ctype.startswith("multipart/") \
        else blob.content
    assert sha256(data) == fp
    return r.json()["metadata"]


def _tokens(api: httpx.Client, fp: str) -> set[str]:
    """Ids of the used (cancelled) secrets of image ``fp``."""
    ops = api.get("/1.0/operations?recursion=1").json()["metadata"].get("cancelled") or []
    return {o["id"] for o in ops if o["class"] == "token"
            and (o.get("metadata") or {}).get("fingerprint") == fp}


def test_second_corral_pulls_over_the_lxd_protocol(api, stack, served, other, oapi,
                                                   tmp_path):
    """``lxc image copy`` between two Corrals: a public image from an untrusted (public)
    remote, and a private one from a remote the client is trusted on (the 5.0 client asks
    the source for a secret and tells the target to pull with it)."""
    env = client_env(stack, tmp_path, "two")  # untrusted on the source
    lxc(env, "remote", "add", "dst", f"unix://{other.socket}")
    lxc(env, "remote", "add", "pub", served.url, "--public", "--accept-certificate")
    trusted = client_env(stack, tmp_path, "two-trusted")  # a client certificate of its own
    lxc(trusted, "remote", "add", "dst", f"unix://{other.socket}")
    token = lxc({**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(tmp_path / "adm")},
                "config", "trust", "add", "--name", f"{served.prefix}-two"
                ).stdout.strip().splitlines()[-1]
    lxc(trusted, "remote", "add", "src", token)
    try:
        lxc(env, "image", "copy", f"pub:{served.aliases['squashfs']}", "dst:",
            "--alias", "sq")
        assert _pulled(oapi, served.fps["squashfs"])["aliases"] == [
            {"name": "sq", "description": ""}]
        lxc(env, "image", "copy", f"pub:{served.aliases['unified']}", "dst:")
        _pulled(oapi, served.fps["unified"])
        for name in (served.aliases["private"], served.fps["private"]):
            r = lxc(env, "image", "copy", f"pub:{name}", "dst:", check=False)
            assert r.returncode != 0  # not public: an untrusted client does not see it
        assert oapi.get(f"/1.0/images/{served.fps['private']}").status_code == 404
        before = _tokens(api, served.fps["private"])
        lxc(trusted, "image", "copy", f"src:{served.aliases['private']}", "dst:",
            "--alias", "priv")
        rec = _pulled(oapi, served.fps["private"])
        assert rec["public"] is False
        assert _tokens(api, served.fps["private"]) - before, \
            "the copy spent a secret of the source"
    finally:
        for fp in served.fps.values():
            r = oapi.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(oapi, r, ok=False)
        for c in api.get("/1.0/certificates?recursion=1").json()["metadata"]:
            if c["name"] == f"{served.prefix}-two":
                api.delete(f"/1.0/certificates/{c['fingerprint']}")


def test_second_corral_pulls_from_the_served_tree(api, stack, served, other, oapi,
                                                  tmp_path):
    """The second Corral copies from the first's simplestreams tree: split (squashfs and
    tar.gz rootfs), unified, and a VM image; through ``lxc`` and through the API."""
    env = client_env(stack, tmp_path, "twoss")
    lxc(env, "remote", "add", "dst", f"unix://{other.socket}")
    add_simplestreams_remote(env, "corral", served.url, server_cert(api))
    try:
        for kind in ("squashfs", "targz", "unified"):
            lxc(env, "image", "copy", f"corral:{served.aliases[kind]}", "dst:",
                "--alias", f"ss-{kind}")
            rec = _pulled(oapi, served.fps[kind])
            assert rec["aliases"] == [{"name": f"ss-{kind}", "description": ""}]
            assert rec["type"] == "container"
        r = oapi.post("/1.0/images", json={"source": {
            "type": "image", "mode": "pull", "protocol": "simplestreams",
            "server": served.url, "certificate": server_cert(api),
            "alias": served.aliases["vm"], "image_type": "virtual-machine"}})
        assert wait_op(oapi, r)["metadata"]["fingerprint"] == served.fps["vm"]
        assert _pulled(oapi, served.fps["vm"])["type"] == "virtual-machine"
        r = oapi.post("/1.0/images", json={"source": {
            "type": "image", "mode": "pull", "protocol": "simplestreams",
            "server": served.url, "certificate": server_cert(api),
            "alias": served.aliases["private"]}})
        assert r.status_code != 202 or wait_op(oapi, r, ok=False)["status"] == "Failure"
        assert oapi.get(f"/1.0/images/{served.fps['private']}").status_code == 404
    finally:
        for fp in served.fps.values():
            r = oapi.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(oapi, r, ok=False)


def test_second_corral_launches_from_the_served_tree(api, stack, served, other, oapi,
                                                     busybox_tarball, tmp_path):
    """``lxc launch corral:ALIAS dst:NAME``: the second Corral pulls the squashfs image
    from the first's tree (a cached image) and runs it."""
    env = client_env(stack, tmp_path, "launch")
    lxc(env, "remote", "add", "dst", f"unix://{other.socket}")
    add_simplestreams_remote(env, "corral", served.url, server_cert(api))
    with make_world(oapi, other, busybox_tarball, network=False, pool_driver="dir") as w:
        name = w.name("ss")
        try:
            lxc(env, "launch", f"corral:{served.aliases['squashfs']}", f"dst:{name}",
                "-p", w.profile)
            assert lxc(env, "exec", f"dst:{name}", "--", "echo", "hi").stdout.strip() == "hi"
            rec = _pulled(oapi, served.fps["squashfs"])
            assert rec["cached"] is True
            assert oapi.get(f"/1.0/instances/{name}").json()["metadata"]["config"][
                "volatile.base_image"] == served.fps["squashfs"]
        finally:
            w.remove(name)
            r = oapi.delete(f"/1.0/images/{served.fps['squashfs']}")
            if r.status_code == 202:
                wait_op(oapi, r, ok=False)


def test_second_corral_refreshes_when_the_alias_moves(api, stack, served, other, oapi,
                                                      tmp_path):
    """An image copied with --auto-update follows its alias on the served tree: moved to
    a newer upload of the same system, ``lxc image refresh`` takes that one."""
    env = client_env(stack, tmp_path, "refresh")
    lxc(env, "remote", "add", "dst", f"unix://{other.socket}")
    add_simplestreams_remote(env, "corral", served.url, server_cert(api))
    moving = f"{served.prefix}-moving"
    assert api.post("/1.0/images/aliases", json={"name": moving, "target":
                                                 served.fps["unified"]}).status_code == 200
    try:
        lxc(env, "image", "copy", f"corral:{moving}", "dst:", "--alias", "mv",
            "--auto-update")
        rec = _pulled(oapi, served.fps["unified"])
        assert rec["auto_update"] is True
        assert rec["update_source"]["alias"] == moving
        assert api.patch(f"/1.0/images/aliases/{moving}", json={
            "target": served.fps["newer"]}).status_code == 200
        lxc(env, "image", "refresh", "dst:mv")
        assert oapi.get("/1.0/images/aliases/mv").json()["metadata"]["target"] == \
            served.fps["newer"]
        _pulled(oapi, served.fps["newer"])
        assert oapi.get(f"/1.0/images/{served.fps['unified']}").status_code == 404
    finally:
        api.delete(f"/1.0/images/aliases/{moving}")
        for fp in served.fps.values():
            r = oapi.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(oapi, r, ok=False)


# -- the tree's rules (pure) --------------------------------------------------------------

def _rec(fp: str, uploaded: str, *, os_: str = "busybox", aliases: int = 0,
         kind: str = "container", rootfs: str | None = None) -> dict[str, Any]:
    return {"fingerprint": fp, "architecture": "x86_64", "type": kind,
            "uploaded_at": uploaded, "properties": {"os": os_, "release": "1"} if os_ else {},
            "_blob": {"meta": f"{fp}.meta", "meta_ext": ".tar.xz",
                      "rootfs": f"{fp}.rootfs" if rootfs else None, "rootfs_ext": rootfs}}


def test_tree_rules_products_versions_and_aliases():
    fps = {n: n * 64 for n in "abcdef"}
    recs = [_rec(fps["a"], "2026-01-01T00:00:00Z"),  # older, own alias: own product
            _rec(fps["b"], "2026-01-02T00:00:00Z"),  # older, no alias: a version
            _rec(fps["c"], "2026-01-03T00:00:00Z", rootfs=".squashfs"),  # newest: product
            _rec(fps["d"], "2026-01-03T00:00:00Z", os_=""),  # no os: a product of its own
            _rec(fps["e"], "2026-01-01T00:00:00Z", kind="virtual-machine"),  # unified VM
            _rec(fps["f"], "2026-01-01T00:00:00Z", kind="virtual-machine", rootfs=".qcow2")]
    aliases = [{"name": "old", "target": fps["a"]}, {"name": "cur", "target": fps["c"]},
               {"name": "x,y", "target": fps["c"]}, {"name": "vm", "target": fps["f"]}]
    info = {o: streams_tree.FileInfo("0" * 64, 1) for r in recs
            for o in (r["_blob"]["meta"], r["_blob"]["rootfs"]) if o}
    tree = streams_tree.build(recs, aliases, info)
    products = tree.products["products"]
    main = products["busybox:1:amd64:default"]
    assert main["aliases"] == "cur"  # a name with a comma cannot be a product alias
    assert sorted(main["versions"]) == ["20260102_000000", "20260103_000000"]
    newest = main["versions"]["20260103_000000"]["items"]
    assert newest["lxd.tar.xz"]["combined_squashfs_sha256"] == fps["c"]
    assert newest["squashfs"]["path"] == f"images/{fps['c']}/root.squashfs"
    assert products[f"busybox:1:amd64:default:{fps['a'][:12]}"]["aliases"] == "old"
    assert f"image:{fps['d'][:12]}:amd64" in products
    vm = products["busybox:1:amd64:default:vm"]
    assert vm["aliases"] == "vm" and len(vm["versions"]) == 1  # the unified VM is left out
    item = next(iter(vm["versions"].values()))["items"]
    assert item["lxd.tar.xz"]["combined_disk-kvm-img_sha256"] == fps["f"]
    assert fps["e"] not in json.dumps(tree.products)
    assert set(tree.index["index"]["images"]["products"]) == set(products)
    assert tree.files[f"images/{fps['b']}/lxd_combined.tar.xz"].object == f"{fps['b']}.meta"
