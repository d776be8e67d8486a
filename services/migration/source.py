"""The source of a migration: ``POST /1.0/instances/<name>`` with ``{"migration": true}``.

As LXD's migrationSourceWs (lxd/migrate_instance.go, driver_lxc.go MigrateSend): an
operation of class ``websocket`` whose metadata is the secrets (``control``, ``fs``); once
both websockets are connected we send the offer header (rsync with its features, the
snapshots with their configuration), read the target's answer, rsync each snapshot and
then the instance over ``fs``, and wait for the target's ``MigrationControl``: the
operation succeeds only when the target says it has the instance whole. The source is
never changed: a move deletes it afterwards (the client does, once the copy succeeded).

Pull mode: the client gives the secrets to the target, which dials our gateway (the
websockets reach us over the bus, shared/streams.py). Push mode (``target`` in the body):
we dial the target's operation with its secrets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared import faults, streams
from shared.api import url
from shared.backup import vmdisk
from shared.bus import Bus
from shared.config import env_seconds
from shared.errors import BadRequest, CorralError
from shared.log import get_logger
from shared.messages.backup import (
    VolumeBackupFreezeRequest,
    VolumeBackupReply,
    VolumeBackupRequest,
)
from shared.models import ObjectRequest, Reply

from . import channels, common, frames, frozen, rsync, wire
from .channels import Channel

log = get_logger()
# The target has this long to connect both websockets (CORRAL_WS_TIMEOUT, as exec's: the
# test stack makes it 10 s, so a move whose relay never came fails in 10 s, not 30).
WS_TIMEOUT = env_seconds("CORRAL_WS_TIMEOUT", 30.0, 1.0)
RESULT_TIMEOUT = 3600.0  # the target's verdict (it imports what it received first)
FEATURES = ["xattrs", "delete", "compress", "bidirectional"]


def offer(inst: dict[str, Any], snaps: list[dict[str, Any]], fs: int = wire.RSYNC
          ) -> dict[str, Any]:
    """The MigrationHeader we offer: ``fs`` (BTRFS from a btrfs pool, as LXD's: the target
    answers RSYNC if its pool is not btrfs) with rsync's features for the fallback; a
    running container says ``criu: NONE`` (as LXD's stateless copy: the target then
    expects a final sync of the volume)."""
    return {
        "fs": fs, "predump": False,
        "criu": wire.CRIU_NONE if inst.get("status") == "Running" else None,
        "rsyncFeatures": {f: True for f in FEATURES},
        "snapshotNames": [s["name"].split("/")[-1] for s in snaps],
        "snapshots": [snapshot_message(s) for s in snaps],
    }


def snapshot_message(s: dict[str, Any]) -> dict[str, Any]:
    return {"name": s["name"].split("/")[-1],
            "localConfig": wire.config_list(s.get("config") or {}),
            "profiles": list(s.get("profiles") or []),
            "ephemeral": bool(s.get("ephemeral")),
            "localDevices": wire.device_list(s.get("devices") or {}),
            "architecture": common.ARCHES.get(s.get("architecture") or "", 0),
            "stateful": False,
            "creation_date": common.unix_time(s.get("created_at")),
            "last_used_date": common.unix_time(s.get("last_used_at")),
            "expiry_date": common.unix_time(s.get("expires_at"))}


async def start(svc: Any, req: ObjectRequest) -> Reply:
    body = req.body or {}
    bus: Bus = svc.bus
    inst = await common.instance(bus, req.project, req.name)  # 404 as the instance service
    if inst.get("type", "container") not in ("container", "virtual-machine"):
        raise BadRequest(f"Instances of type {inst.get('type')!r} do not migrate")
    if inst.get("type") == "virtual-machine" and inst.get("status") != "Stopped":
        # LXD 5.0 needs migration.stateful and QEMU's live migration for a running VM;
        # between nodes of one cluster that is the instance service's, not this protocol
        raise BadRequest(f"Virtual machine {req.name!r} is {inst.get('status')}: stop it "
                         "before copying or moving it to another server (live migration "
                         "of virtual machines between servers is not supported)")
    if body.get("live"):
        raise BadRequest("Live migration needs CRIU, which does not work on this host: "
                         "stop the instance first, or copy it with --stateless")
    if inst.get("status") not in ("Stopped", "Running"):
        raise BadRequest(f"Instance {req.name!r} is {inst.get('status')}: stop or start it "
                         "before copying or moving it to another server")
    snaps: list[dict[str, Any]] = []
    if not body.get("instance_only"):
        reply = await bus.request("instance", "snapshot_list", ObjectRequest(
            project=req.project, name=req.name, body={"recursion": 1}), timeout=30)
        snaps = list(reply.metadata or [])
    target = body.get("target") if isinstance(body.get("target"), dict) else None
    secrets = (target.get("secrets") or target.get("websockets") or {}) if target else {}
    if target is not None:
        if not target.get("operation") or not all(secrets.get(n) for n in common.SECRETS) \
                or not target.get("certificate"):
            raise BadRequest("Push migration needs target.operation, target.certificate "
                             "(pinned) and target.secrets (control, fs)")
    fds = streams.new_fds(common.SECRETS)
    ready: asyncio.Future[streams.ServiceStreams | None] = \
        asyncio.get_running_loop().create_future()
    source_url = url("instances", req.name, req.project)

    async def run(handle: Any) -> dict[str, Any]:
        ss: streams.ServiceStreams | None = None
        try:
            try:
                if target is None:
                    ss = await streams.ServiceStreams(bus, handle.id, common.SECRETS).open()
                ready.set_result(ss)
            except BaseException as exc:
                ready.set_exception(exc)
                raise
            async with channels.opened(common.SECRETS, ss, WS_TIMEOUT, target or {}, secrets,
                                       svc.server_cert()) as chans:
                await send_instance(bus, req.project, inst, snaps, chans, handle)
            return {}
        except BaseException as exc:
            log.warning("migration source failed", op=handle.id,
                        error=getattr(exc, "message", None) or repr(exc))
            raise

    op = await svc.operations.start(
        "Migrating instance", run, cls="websocket" if target is None else "task",
        resources={"instances": [source_url], "containers": [source_url]},
        project=req.project, metadata=dict(fds) if target is None else None)
    await ready  # the streams listen before the client can learn the secrets
    return Reply(type="async", operation=op.lxd())


async def send_instance(bus: Bus, project: str, inst: dict[str, Any],
                        snaps: list[dict[str, Any]], chans: dict[str, Channel],
                        handle: Any) -> None:
    control, fs = chans[common.CONTROL], chans[common.FS]
    # btrfs send only of a stopped container (LXD: no MultiSync with optimized migration)
    vm = inst.get("type") == "virtual-machine"
    if vm:  # LXD's generic VFS: the config tree by rsync, the disk as a raw stream
        ours = wire.BLOCK_AND_RSYNC
    else:
        ours = wire.BTRFS if inst.get("status") == "Stopped" and await common.pool_driver(
            bus, project, common.root_pool(inst)) == "btrfs" else wire.RSYNC
    hdr = offer(inst, snaps, ours)
    if vm:  # the disk's size, so that the target makes its volume as large (LXD's hint)
        path = await common.volume_path(bus, project, inst)
        hdr["volumeSize"] = (await asyncio.to_thread(vmdisk.plan, vmdisk.disk_of(path)))[0]
    await control.send(wire.encode("MigrationHeader", hdr))
    resp = wire.header(await control.recv_message(WS_TIMEOUT))
    chosen = resp.get("fs", wire.RSYNC)
    if chosen not in ((ours,) if vm else (wire.RSYNC, ours)):
        raise CorralError(f"The target chose {wire.FS_NAMES.get(chosen, chosen)}: "
                          f"{wire.FS_NAMES[ours]} or RSYNC was offered", 500)
    features = wire.rsync_features(resp) if resp.get("rsyncFeatures") else \
        ["xattrs", "delete", "compress"]  # LXD 3.7's set when none is said
    names = resp.get("snapshotNames") or []
    wanted = [n for n in hdr["snapshotNames"] if n in names] if resp.get("refresh") \
        else hdr["snapshotNames"]
    verdict = asyncio.create_task(control.recv_message(None))
    progress = common.Progress(handle)
    try:
        if chosen == wire.BTRFS:
            await _send_or_verdict(send_btrfs(bus, project, inst, wanted, fs, progress,
                                              handle.id), verdict)
        elif chosen == wire.BLOCK_AND_RSYNC:
            await _send_or_verdict(send_vm(bus, project, inst, wanted, fs, features,
                                           progress), verdict)
        for name in wanted if chosen == wire.RSYNC else []:
            if verdict.done():
                break  # the target answered already (a failure is raised below)
            path = await common.volume_path(bus, project, inst, name)
            await _send_or_verdict(rsync.send(path, fs, features, progress.on(name)),
                                   verdict)
            faults.point("migration:source_after_snapshot")
        path = await common.volume_path(bus, project, inst)
        if chosen == wire.RSYNC:
            await _send_or_verdict(rsync.send(path, fs, features,
                                              progress.on(inst["name"])), verdict)
        faults.point("migration:source_after_volume")
        if resp.get("criu") == wire.CRIU_NONE:  # running: LXD's MultiSync, a final pass
            await _send_or_verdict(rsync.send(path, fs, features, progress.on(inst["name"])),
                                   verdict)
        result = wire.decode("MigrationControl",
                             await asyncio.wait_for(asyncio.shield(verdict), RESULT_TIMEOUT))
    finally:
        if not verdict.done():
            verdict.cancel()
    if not result.get("success"):
        raise CorralError(f"Error from migration target: {result.get('message') or 'failed'}",
                          500)
    log.info("migration sent", instance=inst["name"], snapshots=len(wanted),
             fs=wire.FS_NAMES.get(chosen, chosen))


async def send_vm(bus: Bus, project: str, inst: dict[str, Any], wanted: list[str],
                  fs: Channel, features: list[str], progress: common.Progress) -> None:
    """LXD's genericVFSMigrateVolume for a VM: per snapshot (oldest first) then the
    volume, the config tree by rsync without the disk, then the disk as raw bytes read
    from its qcow2 chain (no raw copy made on this side), ended by a barrier."""
    for name in [*wanted, None]:
        path = await common.volume_path(bus, project, inst, name)
        label = name or inst["name"]
        await rsync.send(path, fs, features, progress.on(label),
                         exclude=tuple(sorted(vmdisk.DISK_FILES)))
        raw = await asyncio.to_thread(vmdisk.RawReader, vmdisk.disk_of(path))
        try:
            await frames.send_reader(raw.read, fs, progress.on(label))
        finally:
            raw.close()
        if name is not None:
            faults.point("migration:source_after_snapshot")


async def send_btrfs(bus: Bus, project: str, inst: dict[str, Any], wanted: list[str],
                     fs: Channel, progress: common.Progress, op_id: str) -> None:
    """LXD's migrateVolumeOptimized: each snapshot's btrfs send stream against the one
    before it, then the volume's against the last snapshot, each ended by a barrier.
    A writable subvolume cannot be sent: the storage service freezes read-only copies
    (snapshots of the subvolumes, no data copied), dropped at the end whatever happens."""
    freeze = VolumeBackupFreezeRequest(
        project=project, pool=common.root_pool(inst), kind="container", name=inst["name"],
        backup=f"migration-{op_id}", snapshots=wanted)
    drop = VolumeBackupRequest(**freeze.model_dump(exclude={"backup_config"}))
    entry = frozen.record(bus.config, op_id, drop)  # a kill from here on: swept at start
    try:
        reply = await bus.request("storage", "volume_backup_freeze", freeze,
                                  node=bus.config.node, timeout=common.PATH_TIMEOUT)
        copies = VolumeBackupReply.model_validate(reply.metadata)
        parent: Path | None = None
        for name in wanted:
            path = Path(copies.snapshot_paths[name])
            await frames.send_btrfs(path, parent, fs, progress.on(name))
            faults.point("migration:source_after_snapshot")
            parent = path
        await frames.send_btrfs(Path(copies.path), parent, fs, progress.on(inst["name"]))
    finally:
        await asyncio.shield(frozen.release(bus, entry, drop))


async def _send_or_verdict(sending: Any, verdict: asyncio.Task) -> None:
    """Run one rsync; a verdict meanwhile ends it. A failure (or a closed control socket)
    is raised. A success is LXD's target done with the last stream before our rsync saw
    the end of it (it answers as soon as its receiver exits, then disconnects): the
    sender's own ending no longer matters."""
    task = asyncio.ensure_future(sending)
    done, _ = await asyncio.wait({task, verdict}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        return
    msg = wire.decode("MigrationControl", verdict.result())  # raises if the socket closed
    if msg.get("success"):
        try:
            await asyncio.wait_for(task, rsync.DRAIN_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the target has it all: only say so
            log.debug("rsync sender ended after the target's success", error=str(exc))
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise CorralError(f"Error from migration target: {msg.get('message') or 'failed'}", 500)
