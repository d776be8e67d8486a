"""The public images as a simplestreams tree, as LXD's client reads one.

Pure: records, aliases and the files' sha256/size in; ``index.json``, ``images.json`` and
the map of item paths to objects out. The rules it meets are those of LXD 5.0's
``shared/simplestreams`` (products.go ``ToLXD``, simplestreams.go ``applyAliases``):

- Items. A split container image is a metadata item of ftype ``lxd.tar.xz`` carrying the
  combined fingerprint (sha256 of metadata + rootfs, which is the image's fingerprint) in
  the field LXD reads for its root item's ftype, plus that root item: ``squashfs``, else
  ``root.tar.xz``. LXD only knows those two container root types, and unpacks by content,
  not by name: a ``.tar.gz`` rootfs is served under ftype ``root.tar.xz`` and its real
  extension in its path. A VM image's root is ``disk-kvm.img``. A unified image is one
  ``lxd_combined.tar.gz`` item whose own sha256 is the fingerprint (whatever its
  compression, again). A unified VM image cannot be told apart from a container there, so
  it is left out.
- Products and versions. Public images of one os/release/variant/architecture/type (their
  ``properties``) are the versions of one product, named ``os:release:arch:variant`` (+
  ``:vm``), and the client gives a product's aliases to its newest version. So a product's
  aliases are those of its newest version; an older version that still has aliases of its
  own is a product of its own (``...:<fp12>``), so each alias names exactly the image it
  targets here. An image without an ``os`` property is a product of its own.
- Serials (version names) are the upload time (``YYYYMMDD_HHMMSS``: LXD needs the date in
  the first 8 characters and shows it as the creation date), so a newer upload of the same
  system is the newer version, and a client's alias follows it.
- Paths: ``images/<fingerprint>/<file>``, relative to the server's URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

INDEX = "streams/v1/index.json"
PRODUCTS = "streams/v1/images.json"
# LXD's canonical architecture names -> Debian's, as image servers write ``arch``.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "armv6l": "armel",
               "i686": "i386", "ppc64le": "ppc64el", "s390x": "s390x",
               "riscv64": "riscv64", "loongarch64": "loong64"}
# root ftype -> the metadata item's fields that carry the combined fingerprint
COMBINED = {"squashfs": ("combined_squashfs_sha256",),
            "root.tar.xz": ("combined_rootxz_sha256", "combined_sha256"),
            "disk-kvm.img": ("combined_disk-kvm-img_sha256",)}


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    size: int


@dataclass(frozen=True)
class ServedFile:
    """Where the bytes of one item are (the ``images`` object store)."""

    object: str
    size: int
    filename: str


@dataclass
class Tree:
    index: dict[str, Any]
    products: dict[str, Any]
    files: dict[str, ServedFile] = field(default_factory=dict)


def serial_of(rec: dict[str, Any]) -> str:
    """``20261129_201530`` from the record's upload time (RFC 3339)."""
    stamp = str(rec.get("uploaded_at") or rec.get("created_at") or "")
    digits = "".join(ch for ch in stamp[:19] if ch.isdigit())
    if len(digits) < 14:
        digits = (digits + "0" * 14)[:14] if len(digits) >= 8 else "19700101000000"
    return f"{digits[:8]}_{digits[8:14]}"


def _clean(value: str) -> str:
    return value.replace(":", "-").replace(",", "-").strip()


def _group(rec: dict[str, Any]) -> tuple[str, str]:
    """(product name, arch) of a record: what versions of one system share."""
    props = rec.get("properties") or {}
    arch = DEBIAN_ARCH.get(rec.get("architecture", ""), rec.get("architecture", "")) or "unknown"
    suffix = ":vm" if rec.get("type") == "virtual-machine" else ""
    osname = _clean(str(props.get("os") or ""))
    if not osname:
        return f"image:{rec['fingerprint'][:12]}:{arch}{suffix}", arch
    release = _clean(str(props.get("release") or "")) or "current"
    variant = _clean(str(props.get("variant") or "")) or "default"
    return f"{osname}:{release}:{arch}:{variant}{suffix}", arch


def _items(rec: dict[str, Any], info: dict[str, FileInfo], files: dict[str, ServedFile]
           ) -> dict[str, Any] | None:
    """The version's items for one image (None: not servable as simplestreams)."""
    fp, blob = rec["fingerprint"], rec.get("_blob") or {}
    meta_obj, root_obj = blob.get("meta"), blob.get("rootfs")
    if not meta_obj or meta_obj not in info or (root_obj and root_obj not in info):
        return None
    meta_ext = blob.get("meta_ext") or ""
    base = f"images/{fp}"
    if not root_obj:
        if rec.get("type") == "virtual-machine":
            return None
        path = f"{base}/lxd_combined{meta_ext or '.tar'}"
        files[path] = ServedFile(meta_obj, info[meta_obj].size, path.rsplit("/", 1)[1])
        return {"lxd_combined.tar.gz": {"ftype": "lxd_combined.tar.gz", "path": path,
                                        "sha256": info[meta_obj].sha256,
                                        "size": info[meta_obj].size}}
    root_ext = blob.get("rootfs_ext") or ""
    if rec.get("type") == "virtual-machine":
        ftype, root_name = "disk-kvm.img", f"disk-kvm{root_ext or '.img'}"
    elif root_ext == ".squashfs":
        ftype, root_name = "squashfs", "root.squashfs"
    else:
        ftype, root_name = "root.tar.xz", f"root{root_ext or '.tar'}"
    meta_path, root_path = f"{base}/lxd{meta_ext or '.tar'}", f"{base}/{root_name}"
    files[meta_path] = ServedFile(meta_obj, info[meta_obj].size, meta_path.rsplit("/", 1)[1])
    files[root_path] = ServedFile(root_obj, info[root_obj].size, root_name)
    meta_item: dict[str, Any] = {"ftype": "lxd.tar.xz", "path": meta_path,
                                 "sha256": info[meta_obj].sha256, "size": info[meta_obj].size}
    for key in COMBINED[ftype]:
        meta_item[key] = fp
    return {"lxd.tar.xz": meta_item,
            ftype: {"ftype": ftype, "path": root_path, "sha256": info[root_obj].sha256,
                    "size": info[root_obj].size}}


def build(records: list[dict[str, Any]], aliases: list[dict[str, Any]],
          info: dict[str, FileInfo], now: datetime | None = None) -> Tree:
    """The tree of ``records`` (the public images of one project) and their ``aliases``
    (that project's alias records); ``info`` holds each object's sha256 and size."""
    updated = format_datetime(now or datetime.now(timezone.utc))
    by_target: dict[str, list[str]] = {}
    for a in aliases:
        name = str(a.get("name") or "")
        if name and "," not in name:
            by_target.setdefault(a.get("target", ""), []).append(name)
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_group(rec)[0], []).append(rec)

    tree = Tree(index={}, products={})
    products: dict[str, Any] = {}
    for name, recs in sorted(groups.items()):
        recs.sort(key=lambda r: (serial_of(r), r["fingerprint"]), reverse=True)
        for i, rec in enumerate(recs):
            own = sorted(by_target.get(rec["fingerprint"], []))
            # the newest version holds the product; an older one with aliases its own
            product = name if i == 0 else (f"{name}:{rec['fingerprint'][:12]}" if own
                                           else name)
            items = _items(rec, info, tree.files)
            if items is None:
                continue
            entry = products.setdefault(product, _product(rec))
            if i == 0 or product != name:
                entry["aliases"] = ",".join(own)
            serial = serial_of(rec)
            while serial in entry["versions"]:  # two uploads in one second
                serial += "_" + rec["fingerprint"][:8]
            entry["versions"][serial] = {"items": items}
    tree.products = {"content_id": "images", "datatype": "image-downloads",
                     "format": "products:1.0", "updated": updated, "products": products}
    tree.index = {"format": "index:1.0", "updated": updated, "index": {"images": {
        "datatype": "image-downloads", "path": PRODUCTS, "format": "products:1.0",
        "updated": updated, "products": sorted(products)}}}
    return tree


def _product(rec: dict[str, Any]) -> dict[str, Any]:
    props = rec.get("properties") or {}
    _name, arch = _group(rec)
    out: dict[str, Any] = {
        "aliases": "", "arch": arch, "os": str(props.get("os") or "Corral"),
        "release": str(props.get("release") or ""),
        "release_title": str(props.get("release") or ""), "versions": {}}
    if props.get("variant"):
        out["variant"] = str(props["variant"])
    return out
