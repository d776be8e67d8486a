"""The target of a migration: ``POST /1.0/instances`` with ``source.type: migration``.

As LXD's migrationSink (driver_lxc.go MigrateReceive): read the source's offer header,
answer rsync (the features both have, no index header), receive each snapshot and then the
instance with ``rsync --server``, and tell the source the result on ``control``.

What is received goes to a staging directory (``$CORRAL_DIR/migration/<operation>``), laid
out as LXD's backup tarball (``backup/snapshots/<s>/``, ``backup/container/``) with an
``index.yaml`` made from the create request and the offer's snapshots. The instance is then
made by the instance service's ``backup_import`` of that directory, read in place (no
tarball: shared/backup/staged.py; otherwise the same code as ``lxc import``: volume
with its snapshots, NICs, driver definition, records, "Creating" until whole and undone on
failure or at the next start). So nothing exists on the target before the transfer is
complete: a failed or killed migration leaves only the staging directory, which the
operation removes, or the next start of this service if it was killed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from shared import faults, streams
from shared.api import url
from shared.backup import layout
from shared.bus import Bus
from shared.config import env_seconds
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.log import get_logger
from shared.messages.backup import BackupImportRequest
from shared.models import CreateRequest, ObjectRequest, OperationStatus, Reply

from . import channels, common, frames, idmap, refresh, rsync, wire
from .channels import Channel

log = get_logger()
HEADER_TIMEOUT = 30.0
# The source has this long to connect the websockets (CORRAL_WS_TIMEOUT, as exec's: the
# test stack makes it 10 s, so a transfer whose relay never came fails in 10 s, not 30).
WS_TIMEOUT = env_seconds("CORRAL_WS_TIMEOUT", 30.0, 1.0)
IMPORT_TIMEOUT = 3600.0
OUR_FEATURES = {"xattrs", "delete", "compress", "bidirectional"}


def staging_root(config: Any) -> Path:
    return Path(config.dir) / "migration"


def check(body: dict[str, Any]) -> dict[str, Any]:
    """The source object of a migration create, checked (400 with what is missing)."""
    src = body.get("source") or {}
    mode = src.get("mode") or "pull"
    if mode not in ("pull", "push"):
        raise BadRequest(f"Invalid migration mode {mode!r}: pull or push")
    if mode == "pull":
        secrets = src.get("secrets") or {}
        if not isinstance(secrets, dict) or not all(secrets.get(n) for n in common.SECRETS):
            raise BadRequest("Migration source secrets missing: source.secrets needs "
                             "control and fs")
        if not str(src.get("operation") or "").startswith(("https://", "http://")):
            raise BadRequest("Migration source operation missing: source.operation must be "
                             "the source's operation URL")
        if str(src["operation"]).startswith("https://") and not src.get("certificate"):
            raise BadRequest("Migration source certificate missing: source.certificate "
                             "must be the source server's certificate (it is pinned)")
    if src.get("live"):
        raise BadRequest("Live migration needs CRIU, which does not work on this host")
    if (body.get("type") or "container") not in ("container", "virtual-machine"):
        raise BadRequest(f"Invalid instance type {body.get('type')!r}: container or "
                         "virtual-machine")
    if not body.get("name"):
        raise BadRequest("An instance name is required for a migration")
    return src


async def start(svc: Any, req: CreateRequest) -> Reply:
    body = req.body
    src = check(body)
    name = str(body["name"])
    bus: Bus = svc.bus
    existing: dict[str, Any] | None = None
    try:
        existing = await common.instance(bus, req.project, name)
    except NotFound:
        pass
    if existing is not None and not src.get("refresh"):
        raise Conflict(f"Instance {name!r} already exists")
    if existing is not None:  # --refresh of a copy that is there: written into it
        refresh.check_target(existing, body)
    else:
        await check_profiles(bus, req.project, body)
    push = (src.get("mode") or "pull") == "push"
    target_url = url("instances", name, req.project)
    fds = None
    ss = None
    if push:
        fds = streams.new_fds(common.SECRETS)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(handle: Any) -> dict[str, Any]:
        nonlocal ss
        stage = staging_root(svc.config) / handle.id
        try:
            try:
                if push:
                    ss = await streams.ServiceStreams(bus, handle.id, common.SECRETS).open()
                ready.set_result(None)
            except BaseException as exc:
                ready.set_exception(exc)
                raise
            async with channels.opened(common.SECRETS, ss, WS_TIMEOUT, src,
                                       src.get("secrets") or {}, svc.server_cert()) as chans:
                if existing is not None:
                    await refresh.receive(svc, req.project, existing, body, chans, handle)
                else:
                    await receive_instance(svc, req.project, body, chans, stage, handle)
            return {}
        except BaseException as exc:
            log.warning("migration target failed", op=handle.id,
                        error=getattr(exc, "message", None) or repr(exc))
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, stage, True)

    op = await svc.operations.start(
        "Creating instance", run, cls="websocket" if push else "task",
        resources={"instances": [target_url], "containers": [target_url]},
        project=req.project, metadata=dict(fds) if fds else None)
    await ready
    return Reply(type="async", operation=op.lxd())


async def check_profiles(bus: Bus, project: str, body: dict[str, Any]) -> None:
    """The copy keeps its profiles (as LXD's): say a missing one now, before any data
    moves, rather than once everything is received (the import would refuse it then)."""
    profiles = body.get("profiles")
    for name in (["default"] if profiles is None else profiles):
        if await _profile_exists(bus, project, str(name)):
            continue
        # a project without features.profiles uses the default project's: the import
        # decides then; only a profile found nowhere is sure to fail
        if project == "default" or not await _profile_exists(bus, "default", str(name)):
            raise NotFound(f"Profile {name!r} not found: create it on this server first, "
                           "or copy with --profile or --no-profiles") from None


async def _profile_exists(bus: Bus, project: str, name: str) -> bool:
    try:
        await bus.request("instance", "profile_get", ObjectRequest(project=project, name=name),
                          timeout=30)
        return True
    except NotFound:
        return False


async def target_pool(bus: Bus, project: str, body: dict[str, Any]) -> str:
    """The pool the copy will land in, as the import decides it: the request's root disk,
    else the last of its profiles that has one ("" when none says)."""
    for dev in (body.get("devices") or {}).values():
        if isinstance(dev, dict) and dev.get("type") == "disk" and dev.get("path") == "/" \
                and dev.get("pool"):
            return str(dev["pool"])
    pool = ""
    profiles = body.get("profiles")
    for name in (["default"] if profiles is None else profiles):
        prof: dict[str, Any] = {}
        for proj in dict.fromkeys([project, "default"]):
            try:
                prof = (await _profile(bus, proj, str(name))) or {}
                break
            except NotFound:
                continue
        for dev in (prof.get("devices") or {}).values():
            if dev.get("type") == "disk" and dev.get("path") == "/" and dev.get("pool"):
                pool = str(dev["pool"])
    return pool


async def _profile(bus: Bus, project: str, name: str) -> dict[str, Any]:
    reply = await bus.request("instance", "profile_get",
                              ObjectRequest(project=project, name=name), timeout=30)
    return reply.metadata or {}


async def choose_fs(bus: Bus, project: str, body: dict[str, Any],
                    offer: dict[str, Any]) -> int:
    """BTRFS when the source offers it and the copy lands in a btrfs pool here (LXD's
    negotiation); RSYNC otherwise, which every LXD source falls back to. An LXD tree
    shifted on disk (an idmap in the offer) comes by rsync: only a tree can be unshifted
    before the import."""
    if (body.get("type") or "container") == "virtual-machine":
        if offer.get("fs") != wire.BLOCK_AND_RSYNC:
            raise CorralError("The source offers no block transfer for a virtual machine "
                              f"({wire.FS_NAMES.get(offer.get('fs') or 0, offer.get('fs'))})",
                              400)
        return wire.BLOCK_AND_RSYNC
    if offer.get("fs") != wire.BTRFS or offer.get("idmap"):
        return wire.RSYNC
    pool = await target_pool(bus, project, body)
    return wire.BTRFS if await common.pool_driver(bus, project, pool) == "btrfs" \
        else wire.RSYNC


def answer(offer: dict[str, Any], instance_only: bool, fs: int = wire.RSYNC
           ) -> dict[str, Any]:
    feats = set(wire.rsync_features(offer)) & OUR_FEATURES
    names = [] if instance_only else list(offer.get("snapshotNames") or [])
    snaps = [] if instance_only else list(offer.get("snapshots") or [])
    # no btrfsFeatures: the source sends no JSON subvolume header frame, only the streams
    return {"fs": fs, "rsyncFeatures": {f: True for f in sorted(feats)},
            # a running source (stateless): the volume comes twice, the final sync last
            "criu": wire.CRIU_NONE if offer.get("criu") == wire.CRIU_NONE else None,
            "snapshotNames": names, "snapshots": snaps, "predump": False,
            "refresh": False, "indexHeaderVersion": 0}


async def receive_instance(svc: Any, project: str, body: dict[str, Any],
                           chans: dict[str, Channel], stage: Path, handle: Any) -> None:
    control, fs = chans[common.CONTROL], chans[common.FS]
    src = body.get("source") or {}
    try:
        offer = wire.header(await control.recv_message(HEADER_TIMEOUT))
        if offer.get("fs", wire.RSYNC) not in (wire.RSYNC, wire.BTRFS, wire.ZFS,
                                                wire.BLOCK_AND_RSYNC):
            raise CorralError("The source offers no filesystem transfer this server takes "
                              f"({wire.FS_NAMES.get(offer['fs'], offer['fs'])})", 400)
        resp = answer(offer, bool(src.get("instance_only")),
                      await choose_fs(svc.bus, project, body, offer))
        await control.send(wire.encode("MigrationHeader", resp))
        progress = common.Progress(handle)
        base = stage / layout.PREFIX
        t0 = time.perf_counter()
        if resp["fs"] == wire.BTRFS:
            await receive_btrfs(fs, base, resp, str(body["name"]), progress)
        elif resp["fs"] == wire.BLOCK_AND_RSYNC:
            await receive_vm(fs, base, resp, str(body["name"]), progress)
        else:
            await receive_rsync(fs, base, resp, offer, str(body["name"]), progress)
        t1 = time.perf_counter()
        await import_instance(svc, project, body, resp, stage, handle)
        # the two halves of a move's time (docs/migration.md): what bounds it
        log.debug("migration received", instance=body["name"],
                  fs=wire.FS_NAMES.get(resp["fs"], resp["fs"]),
                  receive_ms=round((t1 - t0) * 1000, 1),
                  import_ms=round((time.perf_counter() - t1) * 1000, 1))
    except BaseException as exc:
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        try:
            await asyncio.wait_for(control.send(wire.control(False, msg)), 5)
        except BaseException:
            pass
        raise
    await control.send(wire.control(True))


async def receive_btrfs(fs: Channel, base: Path, resp: dict[str, Any], name: str,
                        progress: common.Progress) -> None:
    """The streams, as files laid out as an optimized backup (``snapshots/<s>.bin``,
    ``container.bin``): the import receives them on the pool."""
    for snap in resp["snapshotNames"]:
        await frames.receive_file(fs, base / layout.snapshots_dir("container") / f"{snap}.bin",
                                  progress.on(snap))
        faults.point("migration:sink_after_snapshot")
    await frames.receive_file(fs, base / f"{layout.volume_dir('container')}.bin",
                              progress.on(name))
    faults.point("migration:sink_after_volume")


async def receive_vm(fs: Channel, base: Path, resp: dict[str, Any], name: str,
                     progress: common.Progress) -> None:
    """Per snapshot then the volume: the config tree (rsync), then the raw disk (holes
    kept), laid out as LXD's VM backup (``<dir>/`` and ``<dir>.img``)."""
    vdir, sdir = layout.volume_dir("virtual-machine"), layout.snapshots_dir("virtual-machine")
    features = wire.rsync_features(resp)
    for snap in [*resp["snapshotNames"], None]:
        tree = base / sdir / snap if snap else base / vdir
        await rsync.receive(tree, fs, features, progress.on(snap or name))
        await frames.receive_file(fs, tree.with_name(f"{tree.name}.img"),
                                  progress.on(snap or name), sparse=True)
        faults.point("migration:sink_after_snapshot" if snap
                     else "migration:sink_after_volume")


async def receive_rsync(fs: Channel, base: Path, resp: dict[str, Any], offer: dict[str, Any],
                        name: str, progress: common.Progress) -> None:
    """One tree per snapshot, then the volume's (twice from a running source)."""
    features = wire.rsync_features(resp)
    for snap in resp["snapshotNames"]:
        await rsync.receive(base / layout.snapshots_dir("container") / snap, fs,
                            features, progress.on(snap))
        faults.point("migration:sink_after_snapshot")
    await rsync.receive(base / layout.volume_dir("container"), fs, features,
                        progress.on(name))
    if resp["criu"] == wire.CRIU_NONE:
        await rsync.receive(base / layout.volume_dir("container"), fs, features,
                            progress.on(name))
    faults.point("migration:sink_after_volume")
    if offer.get("idmap"):  # LXD's tree is shifted on disk: ours is not
        await asyncio.to_thread(idmap.unshift, base, offer["idmap"])


def index(body: dict[str, Any], resp: dict[str, Any]) -> dict[str, Any]:
    """backup/index.yaml for ``backup_import``: the instance as the client asked for it
    (its config, devices, profiles), the snapshots as the source described them."""
    snaps = []
    for s in resp["snapshots"]:
        snaps.append({"name": s.get("name"), "config": wire.config_dict(s["localConfig"]),
                      "devices": wire.device_dict(s["localDevices"]),
                      "profiles": s["profiles"], "ephemeral": bool(s.get("ephemeral")),
                      "architecture": common.ARCH_NAMES.get(s.get("architecture") or 0, ""),
                      "stateful": False,
                      "created_at": common.lxd_time(s.get("creation_date")),
                      "last_used_at": common.lxd_time(s.get("last_used_date")),
                      "expires_at": common.lxd_time(s.get("expiry_date"))})
    kind = str(body.get("type") or "container")
    container = {"name": body["name"], "type": kind,
                 "architecture": body.get("architecture") or "",
                 "config": body.get("config") or {}, "devices": body.get("devices") or {},
                 "ephemeral": bool(body.get("ephemeral")),
                 "profiles": body.get("profiles") if body.get("profiles") is not None
                 else ["default"],
                 "description": body.get("description") or ""}
    optimized = resp.get("fs") == wire.BTRFS
    return {"name": body["name"], "backend": "btrfs" if optimized else "dir",
            "type": kind, "optimized": optimized,
            "snapshots": [s["name"] for s in snaps],
            "config": {"container": container, "snapshots": snaps}}


async def import_instance(svc: Any, project: str, body: dict[str, Any],
                          resp: dict[str, Any], stage: Path, handle: Any) -> None:
    """The received trees become the instance (``instance.backup_import`` of the staging
    directory), whole or not at all; we wait for its operation."""
    await handle.set_metadata(fs_progress="importing")
    (stage / layout.INDEX).write_bytes(layout.dump(index(body, resp)))
    # The staging directory is read in place by this node's instance and storage
    # services (shared/backup/staged.py): no tarball is written, uploaded and read back.
    reply = await svc.bus.request("instance", "backup_import", BackupImportRequest(
        project=project, directory=str(stage), name=str(body["name"])), timeout=60)
    op_id = (reply.operation or {}).get("id")
    if not op_id:
        return
    done = await svc.operations.wait(op_id, IMPORT_TIMEOUT)
    if done.get("status") != OperationStatus.SUCCESS[0]:
        raise CorralError(f"Creating the instance failed: {done.get('err') or done['status']}",
                          500)
