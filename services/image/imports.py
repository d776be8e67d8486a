"""Importing an uploaded image: the body of the "Downloading image" operation.

The gateway left the upload in the ``transfers`` object store. Here: fetch it into a private
temp dir, inspect it (format.inspect_*), check the fingerprint the client expected, refuse a
duplicate, copy the files into the ``images`` store, write the record, add aliases. Whatever
fails, nothing is left behind: no record, no ``images`` object this import wrote, no transfer
object, no temp file.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import blobs, faults
from shared.errors import BadRequest, Conflict, NotFound
from shared.image import format as fmt
from shared.messages.image import ImportRequest
from shared.operations import OperationHandle
from shared.state import key

from . import records
from .aliases import Aliases
from .context import ImageContext


async def check_profiles(ctx: ImageContext, project: str, profiles: list[str] | None) -> None:
    """LXD refuses an image whose profiles do not exist (the instance service owns them).
    ``default`` is taken as given: LXD always has it, Corral's bootstrap creates it."""
    from shared.models import ObjectRequest

    for name in profiles or []:
        if name == "default":
            continue
        try:
            await ctx.bus.request("instance", "profile_get",
                                  ObjectRequest(project=project, name=name))
        except NotFound:
            raise BadRequest(f"Profile {name!r} doesn't exist") from None


def _inspect(meta: Path, rootfs: Path | None, rootfs_part: str | None
             ) -> tuple[fmt.ImageInfo, dict[str, str | None]]:
    info = fmt.inspect_split(meta, rootfs) if rootfs else fmt.inspect_unified(meta)
    if rootfs_part == "rootfs.img" and info.type != "virtual-machine":
        raise BadRequest("The rootfs.img part of a VM image must be a qcow2 file")
    exts: dict[str, str | None] = {"meta": records.EXTENSIONS.get(fmt.detect_format(meta), "")}
    exts["rootfs"] = records.EXTENSIONS.get(fmt.detect_format(rootfs), "") if rootfs else None
    return info, exts


@dataclass
class Incoming:
    """Image files in a private temp dir, and what to record with them: an upload's
    (``run``) or a pull's (``pull.py``). ``fingerprint`` is what the client or the server
    said the image is; ``fingerprint_is_content`` False (OCI) takes it as the fingerprint
    instead of the content's sha256. ``record`` adds fields (a pull's ``cached``,
    ``auto_update``, ``update_source``)."""

    project: str
    meta: Path
    rootfs: Path | None = None
    rootfs_part: str | None = None
    filename: str = ""
    public: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    profiles: list[str] | None = None
    aliases: list[dict[str, str]] = field(default_factory=list)
    requestor: Any = None
    fingerprint: str | None = None
    fingerprint_is_content: bool = True
    record: dict[str, Any] = field(default_factory=dict)


async def store(ctx: ImageContext, aliases: Aliases, inc: Incoming, op: OperationHandle
                ) -> dict[str, Any]:
    """Inspect, check, store and record ``inc``; LXD's final operation metadata
    ``{"fingerprint", "size"}``. Nothing is left behind on failure (the caller removes
    its temp dir)."""
    info, exts = await asyncio.to_thread(_inspect, inc.meta, inc.rootfs, inc.rootfs_part)
    if inc.fingerprint and not inc.fingerprint_is_content:
        info = info.model_copy(update={"fingerprint": inc.fingerprint.lower()})
    fp = info.fingerprint
    await op.set_metadata(fingerprint=fp, size=str(info.size))
    if inc.fingerprint and inc.fingerprint.lower() != fp:
        raise BadRequest(f"Fingerprints do not match, got {fp} expected {inc.fingerprint}")
    if await ctx.images.get(key(inc.project, fp)) is not None:
        raise Conflict("Image with same fingerprint already exists")
    for alias in inc.aliases:  # checked first so a taken name leaves no image behind
        if await ctx.aliases.get(key(inc.project, alias.get("name", ""))) is not None:
            raise Conflict(f"Alias already exists: {alias.get('name')}")
    await check_profiles(ctx, inc.project, inc.profiles)
    rec = records.new_record(info, inc.project, filename=inc.filename, public=inc.public,
                             properties=inc.properties, profiles=inc.profiles, exts=exts)
    rec.update(inc.record)
    await _store(ctx, rec, inc.meta, inc.rootfs)
    for alias in inc.aliases:
        await aliases.create(inc.project, {**alias, "target": fp}, inc.requestor)
    await ctx.events.lifecycle("image-created", records_url(fp, inc.project),
                               project=inc.project, context={"type": info.type},
                               requestor=inc.requestor)
    return {"fingerprint": fp, "size": str(info.size)}


async def run(ctx: ImageContext, aliases: Aliases, req: ImportRequest,
              op: OperationHandle) -> dict[str, Any]:
    """Import an upload; returns LXD's final operation metadata ``{"fingerprint", "size"}``."""
    tmp_root = ctx.tmp_dir
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="image-import-", dir=tmp_root))
    transfers = await blobs.transfers(ctx.bus)
    try:
        meta = tmp / "meta"
        await blobs.get_file(transfers, req.meta, meta)
        rootfs = None
        if req.rootfs:
            rootfs = tmp / "rootfs"
            await blobs.get_file(transfers, req.rootfs, rootfs)
        return await store(ctx, aliases, Incoming(
            project=req.project, meta=meta, rootfs=rootfs, rootfs_part=req.rootfs_part,
            filename=req.filename, public=req.public, properties=req.properties,
            profiles=req.profiles, aliases=req.aliases, requestor=req.requestor,
            fingerprint=req.fingerprint), op)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for name in (req.meta, req.rootfs):
            if name:
                await blobs.delete(transfers, name)


def records_url(fp: str, project: str) -> str:
    from shared.api import url

    return url("images", fp, project)


async def _store(ctx: ImageContext, rec: dict[str, Any], meta: Path, rootfs: Path | None
                 ) -> None:
    """Copy the files into ``images`` and write the record; undo the copy on failure."""
    fp, blob = rec["fingerprint"], rec["_blob"]
    shared_blobs = ctx.blobs_in_use(fp)  # another project holds the same image
    store = await blobs.bucket(ctx.bus, records.BUCKET)
    written: list[str] = []
    try:
        if not shared_blobs:
            await blobs.put_file(store, blob["meta"], meta)
            written.append(blob["meta"])
            if rootfs is not None:
                await blobs.put_file(store, blob["rootfs"], rootfs)
                written.append(blob["rootfs"])
        faults.point("image:after_blobs")
        await ctx.images.create(key(rec["project"], fp), rec, "Image")
    except BaseException as exc:
        for name in written:
            await blobs.delete(store, name)
        if isinstance(exc, Conflict):
            raise Conflict("Image with same fingerprint already exists") from None
        raise
