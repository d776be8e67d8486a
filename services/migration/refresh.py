"""``lxc copy c1 other: --refresh``: bring an existing copy up to date (the target side).

As LXD's refresh over the migration API: the target answers the offer with ``refresh:
true`` and, as ``snapshotNames``, only the snapshots it lacks (by name); the source sends
those, oldest first, then the instance; the copy's snapshots the source no longer has
are deleted first (as LXD's; compared by name only). Each missing snapshot's tree is
rsynced into the copy's volume and a snapshot of it is taken there (the instance
service's snapshot, as ``lxc snapshot``), then the instance's tree is rsynced over the
volume (``--delete``): rsync moves only what changed. Always rsync, whatever the pools
(a btrfs send needs the target's snapshots to be received ones, which a plain copy's
are not).

Unlike a new copy this writes into an existing instance, which must be stopped; a failure
half way leaves the copy partly refreshed, as LXD's does (the snapshots already taken are
whole; a new refresh goes on from there).
"""

from __future__ import annotations

from typing import Any

from shared.bus import Bus
from shared.errors import BadRequest, CorralError
from shared.log import get_logger
from shared.models import ObjectRequest, OperationStatus

from . import common, rsync, wire
from .channels import Channel

log = get_logger()
HEADER_TIMEOUT = 30.0
SNAPSHOT_TIMEOUT = 600.0
OUR_FEATURES = {"xattrs", "delete", "compress", "bidirectional"}


def check_target(inst: dict[str, Any], body: dict[str, Any]) -> None:
    """What a refresh can write into: a stopped container of the same type."""
    kind = str(body.get("type") or "container")
    if inst.get("type", "container") != kind:
        raise BadRequest(f"Instance {inst['name']!r} is a {inst.get('type')}, not a {kind}: "
                         "it cannot be refreshed from this source")
    if kind != "container":
        raise BadRequest("Only containers can be refreshed from another server: delete the "
                         "virtual machine's copy and copy it again")
    if inst.get("status") != "Stopped":
        raise BadRequest(f"Instance {inst['name']!r} is {inst.get('status')}: stop it before "
                         "refreshing it")


async def snapshot_names(bus: Bus, project: str, name: str) -> set[str]:
    reply = await bus.request("instance", "snapshot_list", ObjectRequest(
        project=project, name=name, body={"recursion": 0}), timeout=30)
    return {str(u).rstrip("/").split("/")[-1] for u in reply.metadata or []}


def answer(offer: dict[str, Any], have: set[str], instance_only: bool) -> dict[str, Any]:
    feats = set(wire.rsync_features(offer)) & OUR_FEATURES
    snaps = [] if instance_only else [s for s in offer.get("snapshots") or []
                                      if s.get("name") not in have]
    names = [s["name"] for s in snaps] if offer.get("snapshots") else \
        [n for n in offer.get("snapshotNames") or [] if n not in have and not instance_only]
    return {"fs": wire.RSYNC, "rsyncFeatures": {f: True for f in sorted(feats)},
            "criu": wire.CRIU_NONE if offer.get("criu") == wire.CRIU_NONE else None,
            "snapshotNames": names, "snapshots": snaps, "predump": False,
            "refresh": True, "indexHeaderVersion": 0}


def extra(offer: dict[str, Any], have: set[str], instance_only: bool) -> list[str]:
    """The copy's snapshots the source no longer has: deleted first, as LXD's refresh
    (by name only: a snapshot a refresh took here has its own creation date)."""
    if instance_only:
        return []
    theirs = set(offer.get("snapshotNames") or [])
    return sorted(have - theirs)


async def delete_snapshot(svc: Any, project: str, name: str, snap: str) -> None:
    reply = await svc.bus.request("instance", "snapshot_delete", ObjectRequest(
        project=project, name=f"{name}/{snap}"), timeout=60)
    op_id = (reply.operation or {}).get("id")
    if op_id:
        done = await svc.operations.wait(op_id, SNAPSHOT_TIMEOUT)
        if done.get("status") != OperationStatus.SUCCESS[0]:
            raise CorralError(f"Deleting snapshot {snap!r} failed: "
                              f"{done.get('err') or done['status']}", 500)


async def take_snapshot(svc: Any, project: str, name: str, snap: str) -> None:
    reply = await svc.bus.request("instance", "snapshot_create", ObjectRequest(
        project=project, name=name, body={"name": snap}), timeout=60)
    op_id = (reply.operation or {}).get("id")
    if op_id:
        done = await svc.operations.wait(op_id, SNAPSHOT_TIMEOUT)
        if done.get("status") != OperationStatus.SUCCESS[0]:
            raise CorralError(f"Taking snapshot {snap!r} failed: "
                              f"{done.get('err') or done['status']}", 500)


async def receive(svc: Any, project: str, inst: dict[str, Any], body: dict[str, Any],
                  chans: dict[str, Channel], handle: Any) -> None:
    control, fs = chans[common.CONTROL], chans[common.FS]
    src = body.get("source") or {}
    try:
        offer = wire.header(await control.recv_message(HEADER_TIMEOUT))
        if offer.get("idmap"):
            raise CorralError("Refreshing from a source whose tree is shifted on disk (an "
                              "LXD container that ran) is not supported: delete the copy "
                              "and copy it again", 400)
        have = await snapshot_names(svc.bus, project, inst["name"])
        for snap in extra(offer, have, bool(src.get("instance_only"))):
            await delete_snapshot(svc, project, inst["name"], snap)
        resp = answer(offer, have, bool(src.get("instance_only")))
        await control.send(wire.encode("MigrationHeader", resp))
        features = wire.rsync_features(resp)
        progress = common.Progress(handle)
        path = await common.volume_path(svc.bus, project, inst)
        for snap in resp["snapshotNames"]:
            await rsync.receive(path, fs, features, progress.on(snap))
            await take_snapshot(svc, project, inst["name"], snap)
        for _ in range(2 if resp["criu"] == wire.CRIU_NONE else 1):
            await rsync.receive(path, fs, features, progress.on(inst["name"]))
    except BaseException as exc:
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        try:
            await control.send(wire.control(False, msg))
        except BaseException:
            pass
        raise
    await control.send(wire.control(True))
    log.info("migration refreshed", instance=inst["name"], snapshots=resp["snapshotNames"])
