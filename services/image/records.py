"""Image records in LXD's shape, and finding one by fingerprint prefix.

The KV value is LXD's ``api.Image`` minus ``aliases`` (computed from the alias bucket at
read time, so an alias change never has to rewrite the image) plus a private ``_blob``
entry naming the image's objects in the ``images`` object store. ``public()`` is what
leaves the service.
"""

from __future__ import annotations

import re
from typing import Any

from shared.api import etag
from shared.errors import BadRequest, NotFound
from shared.image.format import ImageInfo
from shared.models import lxd_time
from shared.state import Store, key

BUCKET = "images"
NEVER = "0001-01-01T00:00:00Z"  # Go's zero time: LXD's "never" for last_used_at & co
_HEX = re.compile(r"^[0-9a-f]*$")
# LXD's DetectCompression extensions, used to name exported files.
EXTENSIONS = {"gzip": ".tar.gz", "xz": ".tar.xz", "lzma": ".tar.lzma", "bzip2": ".tar.bz2",
              "tar": ".tar", "squashfs": ".squashfs", "qcow2": ".qcow2", "zstd": ".tar.zst"}


def object_names(fp: str, split: bool) -> dict[str, str | None]:
    return {"meta": f"{fp}.meta", "rootfs": f"{fp}.rootfs" if split else None}


def new_record(info: ImageInfo, project: str, *, filename: str, public: bool,
               properties: dict[str, str], profiles: list[str] | None,
               exts: dict[str, str | None]) -> dict[str, Any]:
    """LXD's image object for a fresh upload (``cached`` false: it was not pulled)."""
    split = exts.get("rootfs") is not None
    return {
        "fingerprint": info.fingerprint,
        "architecture": info.architecture,
        "auto_update": False,
        "cached": False,
        "created_at": lxd_time(info.created_at),
        "expires_at": lxd_time(info.expires_at) if info.expires_at else NEVER,
        "filename": filename,
        "last_used_at": NEVER,
        "properties": {**info.properties, **properties},
        "public": public,
        "size": info.size,
        "type": info.type,
        "update_source": None,
        "uploaded_at": lxd_time(),
        "profiles": list(profiles) if profiles is not None else ["default"],
        "project": project,
        "_blob": {**object_names(info.fingerprint, split), "meta_ext": exts["meta"],
                  "rootfs_ext": exts.get("rootfs")},
    }


def public(rec: dict[str, Any], aliases: list[dict[str, Any]]) -> dict[str, Any]:
    """The record as the API shows it, with the aliases that point at it."""
    out = {k: v for k, v in rec.items() if not k.startswith("_")}
    if out.get("update_source") is None:
        out.pop("update_source", None)
    out["aliases"] = [{"name": a["name"], "description": a.get("description", "")}
                      for a in sorted(aliases, key=lambda a: a["name"])
                      if a.get("target") == rec["fingerprint"]]
    return out


def image_etag(rec: dict[str, Any]) -> str:
    """LXD hashes public, auto_update and properties for images."""
    return etag(rec.get("public", False), rec.get("auto_update", False),
                rec.get("properties") or {})


def in_project(images: Store, project: str) -> list[dict[str, Any]]:
    return [r for r in images.cached() if r.get("project", "default") == project]


def find(images: Store, project: str, prefix: str) -> tuple[str, dict[str, Any]]:
    """(KV key, record) of the one image of ``project`` whose fingerprint starts with
    ``prefix``; 404 when none, 400 when several (LXD's messages)."""
    prefix = (prefix or "").strip().lower()
    if not prefix:
        raise BadRequest("No fingerprint prefix specified for the image")
    if not _HEX.match(prefix):
        raise NotFound("Image not found")
    found = [r for r in in_project(images, project) if r["fingerprint"].startswith(prefix)]
    exact = [r for r in found if r["fingerprint"] == prefix]
    if exact:
        found = exact
    if not found:
        raise NotFound("Image not found")
    if len(found) > 1:
        raise BadRequest(f"More than one image matches {prefix!r}: give more characters "
                         "of the fingerprint")
    return key(project, found[0]["fingerprint"]), found[0]


def blob_reply(rec: dict[str, Any]) -> dict[str, Any]:
    """What ``corral.image.blob`` answers (see ``shared.messages.image.BlobRequest``)."""
    blob = rec["_blob"]
    return {"bucket": BUCKET, "objects": {"meta": blob["meta"], "rootfs": blob.get("rootfs")},
            "type": rec["type"], "fingerprint": rec["fingerprint"]}


def export_reply(rec: dict[str, Any]) -> dict[str, Any]:
    """The files of an image as LXD's export names them (``meta-`` prefix when split)."""
    fp, blob = rec["fingerprint"], rec["_blob"]
    if not blob.get("rootfs"):
        files = [{"part": "metadata", "object": blob["meta"],
                  "filename": fp + (blob.get("meta_ext") or "")}]
    else:
        part = "rootfs.img" if rec["type"] == "virtual-machine" else "rootfs"
        files = [{"part": "metadata", "object": blob["meta"],
                  "filename": "meta-" + fp + (blob.get("meta_ext") or "")},
                 {"part": part, "object": blob["rootfs"],
                  "filename": fp + (blob.get("rootfs_ext") or "")}]
    return {"fingerprint": fp, "type": rec["type"], "bucket": BUCKET, "files": files}
