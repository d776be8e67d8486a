"""shared/image/simplestreams.py: LXD's reading of index.json / images.json (pure)."""

from __future__ import annotations

import pytest

from shared.errors import BadRequest, NotFound
from shared.image import simplestreams as ss

A, B, C, D, E, F, G = (c * 64 for c in "abcdefg")


def product(arch="amd64", versions=None, aliases="busybox/1.36/default,busybox/1.36",
            variant="default"):
    return {"aliases": aliases, "arch": arch, "os": "busybox", "release": "1.36",
            "release_title": "1.36", "variant": variant, "versions": versions or {}}


def split_version(meta_sha, squash_fp=None, txz_fp=None, vm_fp=None, base="x"):
    items = {"lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": f"{base}/lxd.tar.xz",
                            "sha256": meta_sha, "size": 100}}
    if squash_fp:
        items["lxd.tar.xz"]["combined_squashfs_sha256"] = squash_fp
        items["root.squashfs"] = {"ftype": "squashfs", "path": f"{base}/root.squashfs",
                                  "sha256": "1" * 64, "size": 1000}
    if txz_fp:
        items["lxd.tar.xz"]["combined_sha256"] = txz_fp
        items["lxd.tar.xz"]["combined_rootxz_sha256"] = txz_fp
        items["root.tar.xz"] = {"ftype": "root.tar.xz", "path": f"{base}/root.tar.xz",
                                "sha256": "2" * 64, "size": 2000}
    if vm_fp:
        items["lxd.tar.xz"]["combined_disk-kvm-img_sha256"] = vm_fp
        items["disk.qcow2"] = {"ftype": "disk-kvm.img", "path": f"{base}/disk.qcow2",
                               "sha256": "3" * 64, "size": 3000}
    return {"items": items}


def doc(**products):
    return {"content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
            "products": products}


def test_index_lists_image_products_only():
    index = {"format": "index:1.0", "index": {
        "images": {"datatype": "image-downloads", "path": "streams/v1/images.json",
                   "products": ["p"]},
        "empty": {"datatype": "image-downloads", "path": "streams/v1/e.json", "products": []},
        "other": {"datatype": "content-download", "path": "streams/v1/o.json",
                  "products": ["q"]}}}
    assert ss.product_paths(index) == ["streams/v1/images.json"]
    with pytest.raises(BadRequest):
        ss.product_paths({"format": "index:1.0"})


def test_split_images_fingerprints_files_and_properties():
    images = ss.parse_products(doc(**{"busybox:1.36:amd64:default": product(versions={
        "20260101_0000": split_version(A, squash_fp=B, txz_fp=C, base="v1")})}))
    by_fp = {i.fingerprint: i for i in images}
    assert set(by_fp) == {B, C}
    sq = by_fp[B]
    assert sq.type == "container" and sq.architecture == "x86_64"
    assert [(f.part, f.path, f.sha256, f.size) for f in sq.files] == [
        ("meta", "v1/lxd.tar.xz", A, 100), ("root", "v1/root.squashfs", "1" * 64, 1000)]
    assert sq.size == 1100
    assert sq.properties["os"] == "busybox" and sq.properties["release"] == "1.36"
    assert sq.properties["variant"] == "default" and sq.properties["type"] == "squashfs"
    assert sq.properties["serial"] == "20260101_0000"
    assert sq.properties["description"] == "busybox 1.36 amd64 (20260101_0000)"
    assert sq.created_at.isoformat() == "2026-01-01T00:00:00+00:00"
    assert by_fp[C].files[1].path == "v1/root.tar.xz"
    assert sq.filename == "lxd.tar.xz"


def test_vm_and_unified_and_skipped_entries():
    unified = {"items": {"c": {"ftype": "lxd_combined.tar.gz", "path": "u/c.tar.gz",
                               "sha256": D, "size": 5}}}
    images = ss.parse_products(doc(**{
        "busybox:1.36:amd64:default": product(versions={
            "20260101": split_version(A, vm_fp=E), "20260102": unified,
            "latest": split_version(A, squash_fp=F),  # no date: skipped, as LXD
            "20260103": split_version(A, squash_fp=None, txz_fp=None)}),  # no root
        "busybox:1.36:nosucharch:default": product(arch="nosucharch", versions={
            "20260101": split_version(A, squash_fp=G)})}))
    by_fp = {i.fingerprint: i for i in images}
    assert set(by_fp) == {D, E}
    assert by_fp[E].type == "virtual-machine"
    assert by_fp[D].type == "container" and [f.part for f in by_fp[D].files] == ["meta"]
    assert by_fp[D].properties["type"] == "tar.gz"


def test_missing_combined_fingerprint_or_bad_item_is_skipped():
    v = split_version(A, squash_fp=B)
    del v["items"]["lxd.tar.xz"]["combined_squashfs_sha256"]
    bad = split_version(A, txz_fp=C)
    bad["items"]["root.tar.xz"]["size"] = "many"
    assert ss.parse_products(doc(p=product(versions={"20260101": v, "20260102": bad}))) == []
    with pytest.raises(BadRequest):
        ss.parse_products({"format": "products:1.0"})


def catalog(local="x86_64"):
    return ss.Catalog.from_documents([doc(**{
        "busybox:1.36:amd64:default": product(versions={
            "20260101_0000": split_version(A, squash_fp=B, txz_fp=C),
            "20260102_0000": split_version(D, squash_fp=E, txz_fp=F, vm_fp=G)}),
        "busybox:1.36:arm64:default": product(arch="arm64", versions={
            "20260101_0000": split_version("9" * 64, squash_fp="8" * 64)})})], local)


def test_aliases_go_to_the_newest_preferred_image():
    cat = catalog()
    newest_squash = cat.by_alias("busybox/1.36")
    assert newest_squash.fingerprint == E
    assert cat.by_alias("busybox/1.36/default/amd64").fingerprint == E
    assert cat.by_alias("busybox/1.36", image_type="virtual-machine").fingerprint == G
    assert cat.by_alias("busybox/1.36", architecture="aarch64").fingerprint == "8" * 64
    # the image list shows short names only on local-architecture images
    assert "busybox/1.36" in cat.by_fingerprint(E).aliases
    assert cat.by_fingerprint("8" * 64).aliases == ["busybox/1.36/default/arm64",
                                                    "busybox/1.36/arm64"]
    # older versions and the second-choice root type hold no alias
    assert cat.by_fingerprint(B).aliases == [] and cat.by_fingerprint(F).aliases == []
    names = {(a["name"], a["type"]) for a in cat.aliases()}
    assert ("busybox/1.36", "container") in names
    assert ("busybox/1.36", "virtual-machine") in names


def test_lookup_errors_and_fingerprint_prefixes():
    cat = catalog()
    with pytest.raises(NotFound, match="does not exist"):
        cat.by_alias("nope")
    with pytest.raises(NotFound, match="architecture s390x"):
        cat.by_alias("busybox/1.36", architecture="s390x")
    assert cat.find(fingerprint=E[:12]).fingerprint == E
    assert cat.find(alias=E[:8]).fingerprint == E  # a fingerprint given as the alias
    with pytest.raises(NotFound):
        cat.find(fingerprint="0" * 12)
    assert cat.by_fingerprint("8").fingerprint == "8" * 64
    with pytest.raises(BadRequest, match="More than one"):
        ss.Catalog(cat.images + [ss.RemoteImage(
            fingerprint="e" + "0" * 63, architecture="x86_64", type="container",
            created_at=cat.images[0].created_at, properties={}, files=[], filename="f",
            product="p", serial="s")], "x86_64").by_fingerprint("e")
    with pytest.raises(BadRequest):
        cat.find()


def test_loads_names_what_failed():
    with pytest.raises(BadRequest, match="index.json"):
        ss.loads(b"<html>", "index.json")
    assert ss.loads(b'{"a": 1}', "x") == {"a": 1}
