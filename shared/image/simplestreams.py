"""Simplestreams as LXD reads it: ``streams/v1/index.json`` -> products files -> images.

Pure parsing, no I/O: the image service's fetcher downloads the JSON and asks here which
images the server offers, and ``corral image list REMOTE:`` does the same on the client
side. The rules are LXD's (``shared/simplestreams/products.go`` ToLXD and
``simplestreams.go`` applyAliases), so an alias names the same image for ``lxc`` and for
Corral:

- a product ``os:release:arch:variant`` has ``versions`` keyed by serial (``20260101_0000``
  or ``20260101``: the creation date); versions whose name is no date are skipped;
- in a version, a metadata item (``lxd.tar.xz`` or ``incus.tar.xz``) combined with each root
  item (``squashfs``, ``root.tar.xz``, ``disk-kvm.img``, ...) is one split image whose
  fingerprint is the metadata item's ``combined_*_sha256`` for that root type; a
  ``lxd_combined.tar.gz`` item alone is a unified image whose fingerprint is its sha256;
- aliases: each product alias ``a`` gives ``a/<arch>`` on every image and ``a`` alone on
  images of the local architecture, given to the preferred image first (newest serial,
  then squashfs before root.tar.xz before VM disks); later images do not take a name an
  earlier one holds for the same type and architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shared.errors import BadRequest, NotFound
from shared.image.format import normalize_architecture

META_FTYPES = ("lxd.tar.xz", "incus.tar.xz")
UNIFIED_FTYPES = ("lxd_combined.tar.gz",)
# root ftype -> the metadata item's field holding the combined fingerprint
ROOT_FTYPES = {"squashfs": ("combined_squashfs_sha256",),
               "root.tar.xz": ("combined_rootxz_sha256", "combined_sha256"),
               "disk-kvm.img": ("combined_disk-kvm-img_sha256",),
               "disk1.img": ("combined_disk1-img_sha256",),
               "uefi1.img": ("combined_uefi1-img_sha256",)}
VM_FTYPES = ("disk-kvm.img", "disk1.img", "uefi1.img")
# LXD's preference among the root types of one version (sort.go).
PREFERENCE = ("squashfs", "root.tar.xz", "disk-kvm.img", "uefi1.img", "disk1.img")


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: ``part`` is ``meta`` (metadata or unified tarball) or ``root``."""

    part: str
    path: str  # relative to the server's URL
    sha256: str
    size: int
    ftype: str


@dataclass
class RemoteImage:
    """One image a simplestreams server offers, as LXD's client lists it."""

    fingerprint: str
    architecture: str  # LXD's canonical name (x86_64)
    type: str  # container | virtual-machine
    created_at: datetime
    properties: dict[str, str]
    files: list[RemoteFile]
    filename: str
    product: str
    serial: str
    product_aliases: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # after applyAliases
    expires_at: datetime | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def root_ftype(self) -> str:
        return self.properties.get("type", "")

    def lxd(self) -> dict[str, Any]:
        """LXD's api.Image for ``lxc image list REMOTE:`` style listings."""
        return {"fingerprint": self.fingerprint, "architecture": self.architecture,
                "type": self.type, "public": True, "size": self.size,
                "filename": self.filename, "properties": dict(self.properties),
                "aliases": [{"name": a, "description": ""} for a in self.aliases],
                "created_at": _iso(self.created_at), "uploaded_at": _iso(self.created_at),
                "expires_at": _iso(self.expires_at or datetime(1970, 1, 1,
                                                               tzinfo=timezone.utc)),
                "auto_update": False, "cached": False}


def _iso(d: datetime) -> str:
    return d.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def loads(data: bytes | str, what: str) -> dict[str, Any]:
    """JSON document or a 400 that names it (a server answering HTML is a common case)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Failed decoding {what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"Failed decoding {what}: expected a JSON object")
    return doc


def product_paths(index: dict[str, Any]) -> list[str]:
    """The products files an ``index.json`` lists for images (``datatype`` image-downloads,
    not empty), in a stable order."""
    out = []
    entries = index.get("index")
    if not isinstance(entries, dict):
        raise BadRequest("Invalid simplestreams index.json: no \"index\" object")
    for name in sorted(entries):
        entry = entries[name]
        if not isinstance(entry, dict) or entry.get("datatype") != "image-downloads":
            continue
        if not entry.get("products") or not isinstance(entry.get("path"), str):
            continue
        out.append(entry["path"])
    return out


def _created(serial: str) -> datetime | None:
    for layout, n in (("%Y%m%d_%H%M", None), ("%Y%m%d_%H:%M", None), ("%Y%m%d", 8)):
        try:
            return datetime.strptime(serial if n is None else serial[:n],
                                     layout).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _arch(name: str) -> str | None:
    try:
        return normalize_architecture(name)
    except BadRequest:
        return None


def _file(item: dict[str, Any], part: str) -> RemoteFile | None:
    try:
        path, sha, size = item["path"], str(item["sha256"]).lower(), int(item["size"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(path, str) or not path or len(sha) != 64 or size < 0:
        return None
    return RemoteFile(part=part, path=path, sha256=sha, size=size, ftype=item.get("ftype", ""))


def _image(name: str, product: dict[str, Any], serial: str, version: dict[str, Any],
           arch: str, created: datetime, meta: dict[str, Any],
           root: dict[str, Any] | None) -> RemoteImage | None:
    if root is None:
        fp = str(meta.get("sha256", ""))
    else:
        fp = next((str(meta[k]) for k in ROOT_FTYPES[root["ftype"]] if meta.get(k)), "")
    files = [_file(meta, "meta")] + ([_file(root, "root")] if root is not None else [])
    if len(fp) != 64 or any(f is None for f in files):
        return None
    # LXD 5.0's description (newer LXD puts the variant where 5.0 puts the serial)
    description = (f"{product.get('os', '')} {product.get('release_title', '')} "
                   f"{product.get('arch', '')}")
    if version.get("label"):
        description += f" ({version['label']})"
    description += f" ({serial})"
    props = {"os": product.get("os", ""), "release": product.get("release", ""),
             "version": product.get("version", ""), "architecture": product.get("arch", ""),
             "label": version.get("label", ""), "serial": serial,
             "description": description, "variant": product.get("variant", ""),
             "type": root["ftype"] if root is not None else "tar.gz"}
    reqs = product.get("lxd_requirements") or product.get("requirements") or {}
    if isinstance(reqs, dict):
        props.update({f"requirements.{k}": str(v) for k, v in reqs.items()})
    aliases = [a.strip() for a in str(product.get("aliases") or "").split(",") if a.strip()]
    expires = None
    if product.get("support_eol"):
        try:
            expires = datetime.strptime(product["support_eol"], "%Y-%m-%d").replace(
                tzinfo=timezone.utc)
        except (TypeError, ValueError):
            expires = None
    return RemoteImage(
        fingerprint=fp.lower(), architecture=arch,
        type="virtual-machine" if root is not None and root["ftype"] in VM_FTYPES
        else "container", created_at=created, properties={k: v for k, v in props.items() if v},
        files=[f for f in files if f is not None], filename=meta["path"].rsplit("/", 1)[-1],
        product=name, serial=serial, product_aliases=aliases, expires_at=expires)


def parse_products(doc: dict[str, Any]) -> list[RemoteImage]:
    """Every image of a products file (``images.json``), aliases not applied yet.

    What LXD skips is skipped (unknown architecture, a version whose name is no date, an
    item without fingerprint or path); a file that is not a products document is a 400."""
    products = doc.get("products")
    if not isinstance(products, dict):
        raise BadRequest("Invalid simplestreams products file: no \"products\" object")
    out: list[RemoteImage] = []
    for name in sorted(products):
        product = products[name]
        if not isinstance(product, dict):
            continue
        arch = _arch(str(product.get("arch", "")))
        versions = product.get("versions")
        if arch is None or not isinstance(versions, dict):
            continue
        for serial in sorted(versions):
            version = versions[serial]
            created = _created(serial) if len(serial) >= 8 else None
            items = version.get("items") if isinstance(version, dict) else None
            if created is None or not isinstance(items, dict):
                continue
            items = {k: v for k, v in sorted(items.items())
                     if isinstance(v, dict) and isinstance(v.get("ftype"), str)}
            for item in items.values():
                if item["ftype"] in UNIFIED_FTYPES:
                    img = _image(name, product, serial, version, arch, created, item, None)
                    if img:
                        out.append(img)
                elif item["ftype"] in META_FTYPES:
                    for root in items.values():
                        if root["ftype"] in ROOT_FTYPES:
                            img = _image(name, product, serial, version, arch, created,
                                         item, root)
                            if img:
                                out.append(img)
    return out


def _sort_key(img: RemoteImage) -> tuple[Any, ...]:
    p = img.properties
    pref = PREFERENCE.index(img.root_ftype) if img.root_ftype in PREFERENCE else 0
    # serial newest first: invert by sorting on the negated characters' order
    return (p.get("os", "\uffff"), p.get("release", "\uffff"), p.get("variant", "\uffff"),
            _Desc(p.get("serial", "")), p.get("architecture", "\uffff"), pref)


class _Desc(str):
    """A string that sorts in reverse (newest serial first)."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__lt__(self, other)


@dataclass(frozen=True)
class AliasEntry:
    name: str
    target: str
    type: str
    architecture: str


class Catalog:
    """The images of a server with LXD's aliases applied; lookups for the pull."""

    def __init__(self, images: list[RemoteImage], local_arch: str) -> None:
        self.local_arch = local_arch
        self.images = sorted(images, key=_sort_key)
        self.alias_entries: list[AliasEntry] = []
        taken: set[tuple[str, str, str]] = set()
        for img in self.images:
            img.aliases = []
            for a in img.product_aliases:
                for name, shown in ((a, img.architecture == local_arch),
                                    (f"{a}/{img.properties.get('architecture', '')}", True)):
                    k = (name, img.type, img.architecture)
                    if k in taken:
                        continue
                    taken.add(k)
                    self.alias_entries.append(AliasEntry(name, img.fingerprint, img.type,
                                                         img.architecture))
                    if shown:
                        img.aliases.append(name)

    @classmethod
    def from_documents(cls, products: list[dict[str, Any]], local_arch: str) -> "Catalog":
        images: list[RemoteImage] = []
        for doc in products:
            images += parse_products(doc)
        return cls(images, local_arch)

    def by_fingerprint(self, prefix: str, image_type: str = "") -> RemoteImage:
        """The one image whose fingerprint starts with ``prefix`` (LXD's messages)."""
        prefix = (prefix or "").strip().lower()
        found = {i.fingerprint: i for i in self.images if i.fingerprint.startswith(prefix)
                 and (not image_type or i.type == image_type)} if prefix else {}
        if not found:
            raise NotFound(f"The requested image could not be found for fingerprint "
                           f"{prefix!r}")
        if len(found) > 1:
            raise BadRequest(f"More than one match for the provided partial fingerprint "
                             f"{prefix!r}")
        return next(iter(found.values()))

    def by_alias(self, name: str, architecture: str = "", image_type: str = ""
                 ) -> RemoteImage:
        """The image ``name`` points at for ``architecture`` (default: the local one) and
        ``image_type`` ("" = either, as LXD: the first type found)."""
        arch = architecture or self.local_arch
        entries = [e for e in self.alias_entries if e.name == name
                   and (not image_type or e.type == image_type)]
        if not entries:
            raise NotFound(f"Alias {name!r} does not exist"
                           + (f" for {image_type} images" if image_type else ""))
        for_arch = [e for e in entries if e.architecture == arch]
        if not for_arch:
            have = ", ".join(sorted({e.architecture for e in entries}))
            raise NotFound(f"Alias {name!r} has no image for architecture {arch} "
                           f"(only {have})")
        types = {e.type for e in for_arch}
        if len(types) > 1 and not image_type:
            # LXD's GetAlias refuses the ambiguity; a container is what most callers mean
            for_arch = [e for e in for_arch if e.type == "container"]
        return self.by_fingerprint(for_arch[0].target, for_arch[0].type)

    def find(self, *, alias: str | None = None, fingerprint: str | None = None,
             architecture: str = "", image_type: str = "") -> RemoteImage:
        """By fingerprint when given (LXD's client always sends it), else by alias."""
        if fingerprint:
            return self.by_fingerprint(fingerprint, image_type)
        if alias:
            try:
                return self.by_alias(alias, architecture, image_type)
            except NotFound:
                # an alias may also be a fingerprint prefix (``lxc image copy x:abc``)
                if all(c in "0123456789abcdef" for c in alias.lower()):
                    return self.by_fingerprint(alias, image_type)
                raise
        raise BadRequest("The image source needs an alias or a fingerprint")

    def aliases(self) -> list[dict[str, str]]:
        """LXD's ListAliases: one entry per (name, type), the preferred image."""
        seen: set[tuple[str, str]] = set()
        out = []
        for e in sorted(self.alias_entries, key=lambda e: (e.architecture != self.local_arch,
                                                           e.name)):
            if (e.name, e.type) in seen:
                continue
            seen.add((e.name, e.type))
            out.append({"name": e.name, "target": e.target, "type": e.type,
                        "description": ""})
        return sorted(out, key=lambda a: (a["name"], a["type"]))


__all__ = ["Catalog", "RemoteFile", "RemoteImage", "loads", "parse_products",
           "product_paths"]
