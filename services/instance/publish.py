"""Packing an instance (or a snapshot of it) as an LXD image: the instance side of
``lxc publish`` (``instance.publish``, asked by the image service).

A container becomes a unified tarball (``metadata.yaml``, ``templates/``, ``rootfs/``),
compressed as asked, streamed from ``tar | compressor`` straight into the ``transfers``
object store: no copy of the file system is made on this disk. A VM becomes LXD's split
form: a metadata tarball (``metadata.yaml``, ``templates/``, ``boot/``...) and its disk
flattened into one standalone qcow2 ``rootfs.img`` (qemu-img needs a file for that; it is
removed as soon as it is stored).

``metadata.yaml`` is the instance's own (from its image, as ``lxc config metadata``
edits it) with a new ``creation_date``, the request's properties when given (LXD replaces
them whole) and ``expiry_date``; an instance without one gets a fresh minimal one.

An OCI application container (its volume holds the runtime ``config.json`` beside
``rootfs/``: drivers/oci_app.py) keeps that file in the tarball, next to
``metadata.yaml`` as the OCI fetcher lays out its metadata tarball, and its ``type: oci``
property even when the request replaces the properties: without them an image of an
app would boot as a system container.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from shared import blobs, faults
from shared.bus import Bus
from shared.errors import BadRequest, Internal, NotFound
from shared.messages.publish import PublishReply, PublishRequest
from shared.messages.storage import VolumePathReply, VolumePathRequest
from shared.state import key

from . import snapshots
from .context import Context
from .drivers.oci_app import CONFIG as OCI_CONFIG
from .drivers.router import type_of
from .lifecycle import host_status

# The VM volume's files (see drivers/qemu.py): the image's qcow2 and the instance's
# overlay (or own disk) on it.
VM_IMAGE = "rootfs.img"
VM_DISK = "root.qcow2"
COMPRESSORS: dict[str, list[str]] = {"gzip": ["gzip", "-c", "-n"], "xz": ["xz", "-c", "-T0"],
                                     "zstd": ["zstd", "-c", "-q", "-T0"]}
PATH_TIMEOUT = 30.0


async def source_volume(ctx: Context, req: PublishRequest) -> tuple[dict[str, Any], Path]:
    """The instance's record and the directory to pack (its volume or a snapshot's)."""
    found = await ctx.instances.get(key(req.project, req.name))
    if found is None or found[0].get("status") in ("Creating", "Deleting"):
        raise NotFound(f"Instance {req.name!r} not found")
    rec = found[0]
    if req.snapshot is None:
        if await host_status(ctx, rec) in ("Running", "Frozen"):
            raise BadRequest("The instance is currently running: stop it first (lxc publish "
                             "--force stops it and starts it again)")
        if rec.get("volume"):
            return rec, Path(rec["volume"])
    elif ctx.snapshots is None or snapshots.find(ctx.snapshots, req.project, req.name,
                                                  req.snapshot) is None:
        raise NotFound(f"Snapshot {req.snapshot!r} of instance {req.name!r} not found")
    msg = VolumePathRequest(project=req.project, pool=rec["pool"], kind=type_of(rec),
                            name=rec["name"], snapshot=req.snapshot)
    reply = await ctx.remote.bus.request("storage", "volume_path", msg, node=ctx.remote.node,
                                         timeout=PATH_TIMEOUT)
    return rec, Path(VolumePathReply.model_validate(reply.metadata).path)


def metadata(volume: Path, rec: dict[str, Any], req: PublishRequest) -> dict[str, Any]:
    """The image's metadata.yaml: the instance's, refreshed for the new image."""
    meta: dict[str, Any] = {}
    meta_file = volume / "metadata.yaml"
    if meta_file.is_file():
        loaded = yaml.safe_load(meta_file.read_text())
        meta = loaded if isinstance(loaded, dict) else {}
    meta["architecture"] = rec.get("architecture") or meta.get("architecture", "x86_64")
    meta["creation_date"] = int(time.time())
    if req.properties is not None:
        meta["properties"] = dict(req.properties)
    meta.setdefault("properties", {})
    if _is_app(volume):
        meta["properties"].setdefault("type", "oci")
    if req.expires_at:
        meta["expiry_date"] = req.expires_at
    else:
        meta.pop("expiry_date", None)
    return meta


def _is_app(volume: Path) -> bool:
    """Whether the volume is an OCI application container's (a regular config.json
    beside rootfs/; what an app's start writes beside it, oci-network/, is the
    instance's, not the image's)."""
    config = volume / OCI_CONFIG
    return config.is_file() and not config.is_symlink()


def _members(volume: Path, vm: bool) -> list[str]:
    """What of the volume goes into the (metadata) tarball besides metadata.yaml."""
    if not vm:
        app = [OCI_CONFIG] if _is_app(volume) else []
        return app + [m for m in ("templates", "rootfs") if (volume / m).exists()]
    return sorted(p.name for p in volume.iterdir()
                  if p.name not in ("metadata.yaml", VM_IMAGE, VM_DISK))


def _stream_tar(work: Path, volume: Path, members: list[str], compression: str,
                errs: tuple[Any, Any]) -> tuple[subprocess.Popen, subprocess.Popen | None]:
    """Start ``tar`` (and its compressor); the last process's stdout is the tarball."""
    cmd = ["tar", "-c", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
           "--sparse", "-f", "-", "-C", str(work), "metadata.yaml"]
    if members:
        cmd += ["-C", str(volume), *members]
    tar = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errs[0])
    if compression == "none":
        return tar, None
    comp = subprocess.Popen(COMPRESSORS[compression], stdin=tar.stdout,
                            stdout=subprocess.PIPE, stderr=errs[1])
    assert tar.stdout is not None
    tar.stdout.close()  # the compressor holds the pipe now: tar sees SIGPIPE if it quits
    return tar, comp


async def _put_stream(store: Any, name: str, work: Path, volume: Path, members: list[str],
                      compression: str) -> None:
    with open(work / "tar.err", "wb") as terr, open(work / "comp.err", "wb") as cerr:
        tar, comp = _stream_tar(work, volume, members, compression, (terr, cerr))
    last = comp or tar
    try:
        await store.put(name, last.stdout)
    except BaseException:
        for proc in (tar, comp):  # nobody reads their pipes any more
            if proc is not None and proc.poll() is None:
                proc.kill()
        raise
    finally:
        for proc in (tar, comp):
            if proc is not None and proc.poll() is None:
                await asyncio.to_thread(proc.wait)
        if last.stdout is not None:
            last.stdout.close()
    # tar exits 1 when a file changed while read (a snapshot never does, a stopped root
    # rarely): the image is still whole. Anything above is a failure.
    if tar.returncode not in (0, 1) or (comp is not None and comp.returncode != 0):
        errs = " ".join((work / f).read_text(errors="replace").strip()[-1000:]
                        for f in ("tar.err", "comp.err") if (work / f).exists())
        raise Internal(f"Packing the image failed: {errs or 'tar or the compressor failed'}")


# Work dirs of the packs this process runs: any other ``publish-*`` dir was left by a
# process that died mid-pack (only the instance service of this node makes them).
_ACTIVE: set[Path] = set()


def _clean_stale(tmp_root: Path) -> None:
    for stale in tmp_root.glob("publish-*"):
        if stale not in _ACTIVE:
            shutil.rmtree(stale, ignore_errors=True)


async def pack(ctx: Context, bus: Bus, tmp_root: Path, req: PublishRequest) -> PublishReply:
    """Pack into ``transfers``; on failure nothing stays there (nor in ``tmp_root``)."""
    if req.compression not in ("none", *COMPRESSORS):
        raise BadRequest(f"Unsupported compression algorithm {req.compression!r}")
    rec, volume = await source_volume(ctx, req)
    vm = type_of(rec) == "virtual-machine"
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    await asyncio.to_thread(_clean_stale, tmp_root)
    work = Path(tempfile.mkdtemp(prefix="publish-", dir=tmp_root))
    _ACTIVE.add(work)
    store = await blobs.transfers(bus)
    base = f"publish-{uuid.uuid4().hex}"
    written: list[str] = []
    try:
        meta = metadata(volume, rec, req)
        (work / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=True))
        members = await asyncio.to_thread(_members, volume, vm)
        written.append(f"{base}.meta")
        await _put_stream(store, f"{base}.meta", work, volume, members, req.compression)
        faults.point("publish:after_meta")
        rootfs = None
        if vm:
            disk = volume / VM_DISK if (volume / VM_DISK).is_file() else volume / VM_IMAGE
            if not disk.is_file():
                raise Internal(f"The VM volume of {rec['name']!r} holds no disk to publish")
            flat = work / "rootfs.img"
            from .drivers import qemu_host  # libvirt: ~11 MiB, loaded once a VM is published
            await asyncio.to_thread(qemu_host.qemu_img, "convert", "-O", "qcow2",
                                    str(disk), str(flat))
            rootfs = f"{base}.rootfs"
            written.append(rootfs)
            await blobs.put_file(store, rootfs, flat)
        written = []  # the image service owns them now
        return PublishReply(meta=f"{base}.meta", rootfs=rootfs,
                            rootfs_part="rootfs.img" if vm else None, type=type_of(rec),
                            properties={str(k): str(v) for k, v in
                                        (meta.get("properties") or {}).items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _ACTIVE.discard(work)
        for name in written:
            await blobs.delete(store, name)
