"""``GET /1.0/instances/<n>/backups/<b>/export``: the tarball, made while it is sent.

The gateway subscribes to ``corral.streams.<id>.data.out`` and asks ``backup_export``;
we answer at once (404s first), then a task writes the tarball in a worker thread
(:class:`shared.backup.writer.TarStream`) from the trees the storage service froze, and
publishes its chunks (:func:`shared.streams.start_download`). Flow control: at most
``DOWNLOAD_WINDOW`` chunks are sent ahead of the
gateway's credits (one message on ``.in`` per chunk it wrote to the client), so a slow
client slows the tarball down and nothing piles up in memory or on disk. The end is an
EOF message; a failure mid-way is a message with a ``Corral-Error`` header, which the
gateway turns into a broken download (never a short file that looks whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared import streams
from shared.backup import layout, optimized, vmdisk
from shared.backup.writer import TarStream
from shared.bus import Bus
from shared.messages.backup import VolumeBackupReply, VolumeBackupRequest

from . import backups
from .context import Context
from .idmap import IdMap


async def prepare(ctx: Context, rec: dict[str, Any]) -> VolumeBackupReply:
    """Where the backup's trees are (404 when the volume or its copies are gone)."""
    reply = await backups.storage(ctx, "volume_backup_get",
                                  VolumeBackupRequest(**backups._volume_ref(rec)))
    return VolumeBackupReply.model_validate(reply.metadata)


def filename(rec: dict[str, Any]) -> str:
    return f"backup{layout.COMPRESSIONS[rec['compression_algorithm']]}"


async def start(ctx: Context, bus: Bus, stream_id: str, inst: dict[str, Any],
                rec: dict[str, Any], vol: VolumeBackupReply,
                idmap: IdMap | None) -> None:
    """Start the producer task (the caller has answered the request)."""
    info = await backups.index(ctx, inst, rec, vol)
    await streams.start_download(
        bus, stream_id, lambda emit: write(emit, rec, vol, info, idmap),
        ctx.log.bind(backup=rec["name"], instance=rec["instance"]), "backup export")


def write(emit: Any, rec: dict[str, Any], vol: VolumeBackupReply, info: dict[str, Any],
          idmap: IdMap | None) -> None:
    """The whole tarball, in LXD's order: index.yaml, [optimized_header.yaml], snapshots
    (oldest first), the volume. Blocking: runs in a worker thread."""
    tar = TarStream(emit, rec["compression_algorithm"])
    try:
        tar.add_bytes(layout.INDEX, layout.dump(info))
        kind = rec["type"]
        vdir, sdir = layout.volume_dir(kind), layout.snapshots_dir(kind)
        snaps = info["snapshots"]
        mapper = _unshift(idmap)
        if info["optimized"]:
            optimized.write(tar, Path(vol.path), [(s, Path(vol.snapshot_paths[s])) for s in snaps],
                            vdir, sdir)
        elif kind == "virtual-machine":
            _write_vm(tar, vol, snaps, vdir, sdir, layout.dump(info["config"]))
        else:
            conf = layout.dump(info["config"])
            for s in snaps:
                tar.add_tree(Path(vol.snapshot_paths[s]), f"{layout.PREFIX}/{sdir}/{s}",
                             mapper, skip=frozenset({layout.BACKUP_YAML}))
            tar.add_tree(Path(vol.path), f"{layout.PREFIX}/{vdir}", mapper,
                         skip=frozenset({layout.BACKUP_YAML}))
            tar.add_bytes(f"{layout.PREFIX}/{vdir}/{layout.BACKUP_YAML}", conf, 0o400)
        tar.close()
    except BaseException:
        tar.abort()
        raise


def _write_vm(tar: TarStream, vol: VolumeBackupReply, snaps: list[str], vdir: str,
              sdir: str, conf: bytes) -> None:
    """LXD's VM layout: per snapshot (oldest first) then the volume, the config
    filesystem part as a tree (``<prefix>/``: metadata.yaml, boot/, templates...) and the
    disk as a raw ``<prefix>.img`` read straight from the qcow2 chain."""
    skip = frozenset({layout.BACKUP_YAML, *vmdisk.DISK_FILES})
    parts = [(Path(vol.snapshot_paths[s]), f"{layout.PREFIX}/{sdir}/{s}") for s in snaps]
    parts.append((Path(vol.path), f"{layout.PREFIX}/{vdir}"))
    for path, prefix in parts:
        tar.add_tree(path, prefix, None, skip=skip)
        if path == Path(vol.path):
            tar.add_bytes(f"{prefix}/{layout.BACKUP_YAML}", conf, 0o400)
        raw = vmdisk.RawReader(vmdisk.disk_of(path))
        try:
            tar.add_reader(f"{prefix}.img", raw.size, raw.read)
        finally:
            raw.close()


def _unshift(idmap: IdMap | None) -> Any:
    """Host ids back to the container's (only for a shifted tree: an idmapped one already
    holds the container's ids on disk)."""
    if idmap is None:
        return None

    def mapper(uid: int, gid: int) -> tuple[int, int]:
        return idmap.uid_from_host(uid), idmap.gid_from_host(gid)
    return mapper
