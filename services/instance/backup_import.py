"""``lxc import``: an instance from a backup tarball in LXD's format (LXD's or ours).

The gateway staged the upload in the ``transfers`` object store. Fast checks answer at
once (as LXD's do, before any work): a tarball without index.yaml, an unknown pool or
profile, a duplicate name (409). Then, as an operation: the storage service makes the
volume and its snapshots from the tarball (``volume_backup_import``: trees or btrfs send
streams, whole or nothing), and we write the instance, its NICs, its LXC/libvirt
definition and its snapshot records.

Ownership: LXD's tarballs hold the container's own ids (LXD unshifts when exporting), and
Corral's unprivileged containers run on idmapped mounts of trees holding those same ids,
so nothing is shifted here; on a host without idmapped mounts the driver shifts the tree
at create as for any new container. LXD's map (``volatile.idmap.*``, host ids from
1000000) is dropped with the other volatile keys that describe LXD's host, not the
instance. MACs stay (an import is the same instance, not a copy: LXD keeps them too).

Crash safety: the instance record says "Creating" from the first step, so a crash is
undone by the next start's reconcile (driver definition, volume with its snapshots,
record); snapshot records are written last, just before the record becomes whole.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from shared import blobs, faults
from shared.backup import layout, reader, staged
from shared.errors import BadRequest, Conflict, CorralError, NotFound
from shared.messages.backup import BackupImportRequest, VolumeBackupImportRequest
from shared.messages.storage import VolumeListRequest, VolumePathReply
from shared.models import lxd_time
from shared.state import key, mutate

from . import create as creating
from . import image_templates, project_checks, records, validate
from .context import Context
from .drivers.base import InstanceSpec
from .drivers.router import TYPES
from .names import host_name
from .snapshots import NO_EXPIRY, snapshot_key

IMPORT_TIMEOUT = 3600.0
# Volatile keys that describe LXD's host or its last run, not the instance.
DROPPED_PREFIXES = ("volatile.idmap.", "volatile.last_state.")
DROPPED_SUFFIXES = (".host_name", ".last_state.created", ".last_state.hwaddr",
                    ".last_state.mtu", ".last_state.ip_addresses", ".last_state.vf.id",
                    ".last_state.vf.vlan", ".last_state.vf.hwaddr", ".last_state.vf.spoofcheck")


def clean_config(config: Any) -> dict[str, str]:
    if not isinstance(config, dict):
        return {}
    return {str(k): str(v) for k, v in config.items()
            if not str(k).startswith(DROPPED_PREFIXES)
            and not (str(k).startswith("volatile.") and str(k).endswith(DROPPED_SUFFIXES))}


async def read_index(transfers: Any, obj: str, directory: Path | None = None
                     ) -> dict[str, Any]:
    """index.yaml from the staged tarball (reads only its first members), or from the
    staged directory of a migration (a file read, no tarball at all)."""
    if directory is not None:
        return layout.parse_index(await asyncio.to_thread(staged.read_index, directory))
    src = reader.ObjectReader(transfers, obj).start()
    try:
        def read() -> bytes:
            return reader.read_index(reader.open_tar(src))
        raw = await asyncio.to_thread(read)
    finally:
        await src.close_async()
    return layout.parse_index(raw)


async def _pool_exists(ctx: Context, project: str, pool: str) -> bool:
    try:
        await ctx.remote.bus.request("storage", "volume_list", VolumeListRequest(
            project=project, pool=pool, kind="container"), timeout=30)
        return True
    except NotFound:
        return False


async def prepare(ctx: Context, req: BackupImportRequest, transfers: Any
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the tarball's index and reserve the instance record; (record, index)."""
    project = req.project
    project_checks.effective(ctx, project, "images")  # 404 for an unknown project
    if not req.object and not req.directory:
        raise BadRequest("A backup import needs a staged tarball or directory")
    directory = staged.checked(ctx.remote.bus.config.dir, req.directory) \
        if req.directory else None
    info = await read_index(transfers, req.object, directory)
    if info["type"] == "custom":
        raise BadRequest("This is a custom volume backup: import it with "
                         "'lxc storage volume import'")
    kind = info["type"]
    if kind == "virtual-machine" and info["optimized"]:
        raise BadRequest("Optimized (btrfs send) backups of virtual machines cannot be "
                         "imported here: export the VM again without --optimized-storage")
    if kind not in TYPES:
        raise BadRequest(f"Invalid backup: unknown instance type {kind!r}")
    await asyncio.to_thread(ctx.drivers.for_type, kind)  # 400 when libvirtd is not up
    conf = info["config"]
    inst = conf.get("container") or conf.get("instance") or {}
    if not isinstance(inst, dict):
        raise BadRequest("Invalid backup: index.yaml's config.container is not an object")
    name = validate.check_name(req.name or info["name"])
    if await ctx.instances.get(key(project, name)) is not None:
        creating.raise_duplicate(name)  # 409 before anything else, as LXD answers it
    profiles = validate.check_profiles(inst.get("profiles") if inst.get("profiles")
                                       is not None else ["default"])
    config = validate.check_config(clean_config(inst.get("config")))
    devices = validate.check_devices(inst.get("devices") or {})
    expanded_profiles = await creating.expand_profiles(ctx, project, profiles)
    pcfg, pdevs = records.expand(expanded_profiles, config, devices)
    if req.pool:
        pool = req.pool
        if not await _pool_exists(ctx, project, pool):
            raise NotFound(f"Storage pool {pool!r} not found")
    elif info.get("pool") and await _pool_exists(ctx, project, str(info["pool"])):
        pool = str(info["pool"])
    else:  # LXD: the backup's pool is not here, the profiles' root disk decides
        try:
            pool = validate.root_device(pdevs)[1]["pool"]
        except BadRequest:
            raise BadRequest(f"Storage pool {info.get('pool')!r} of the backup does not "
                             "exist and no profile gives a root disk: import with "
                             "--storage <pool>") from None
        if not await _pool_exists(ctx, project, pool):
            raise NotFound(f"Storage pool {pool!r} not found")
    if info["optimized"] and info.get("backend") not in (None, "btrfs"):
        raise BadRequest(f"Optimized backups of {info.get('backend')!r} pools cannot be "
                         "imported here")
    try:
        root_name, root_dev = validate.root_device(pdevs)
    except BadRequest:
        root_name, root_dev = "root", {"type": "disk", "path": "/"}
    if root_dev.get("pool") != pool:  # imported elsewhere: the root disk says so, as LXD
        devices[root_name] = {**root_dev, "pool": pool}
        pcfg, pdevs = records.expand(expanded_profiles, config, devices)
    project_checks.creating(ctx, project, name, kind, pcfg, pdevs)
    rec = records.new_record(name, project, {"ephemeral": bool(inst.get("ephemeral")),
                                             "description": inst.get("description") or ""},
                             config, devices, profiles)
    rec.update(type=kind, location=ctx.location,
               expanded_config=pcfg, expanded_devices=pdevs, pool=pool,
               architecture=inst.get("architecture") or rec["architecture"])
    if isinstance(inst.get("created_at"), str) and inst["created_at"]:
        rec["created_at"] = inst["created_at"]
    try:
        await ctx.instances.create(key(project, name), rec, f"Instance {name!r}")
    except Conflict:
        creating.raise_duplicate(name)
    return rec, info


async def build(ctx: Context, rec: dict[str, Any], info: dict[str, Any],
                req: BackupImportRequest) -> dict[str, Any]:
    """The operation's body: volume, NICs, templates, driver, snapshot records; undone
    whole on failure."""
    project, name, pool, kind = rec["project"], rec["name"], rec["pool"], rec["type"]
    k = key(project, name)
    undo: list[Any] = []
    snaps = list(info["snapshots"])
    try:
        drv = ctx.drivers.for_type(kind)
        undo.append(lambda: creating._ignore_missing(ctx.remote.volume_delete(
            project, pool, name, kind)))
        msg = VolumeBackupImportRequest(project=project, pool=pool, kind=kind, name=name,
                                        bucket=req.bucket, object=req.object,
                                        snapshots=snaps, optimized=info["optimized"],
                                        request_id=uuid.uuid4().hex,
                                        directory=req.directory)
        reply = await ctx.remote.watched("storage", lambda: ctx.remote.bus.request(
            "storage", "volume_backup_import", msg, node=ctx.remote.node,
            timeout=IMPORT_TIMEOUT), f"importing the volume of {name!r}")
        path = Path(VolumePathReply.model_validate(reply.metadata).path)
        faults.point("import:after_storage")
        size = creating.root_size(rec["expanded_devices"])
        if size and kind == "container":  # the root disk's size is the volume's quota
            await ctx.remote.volume_quota(project, pool, name, size, kind)
        rec = await mutate(ctx.instances, k, lambda r: {**r, "volume": str(path)})
        nics, vol = await creating.nic_setup(ctx, rec)
        extra = {**vol}
        if not rec["config"].get("volatile.uuid"):
            extra["volatile.uuid"] = str(uuid.uuid4())
        rec = creating.with_config(rec, extra)
        trigger = rec["config"].get("volatile.apply_template")
        if trigger and drv.capabilities.templates:
            await asyncio.to_thread(image_templates.apply, path, trigger, rec)
        rec = _without(rec, "volatile.apply_template")
        host = host_name(project, name)
        spec = InstanceSpec(host, rec["expanded_config"], rec["expanded_devices"], path, nics)
        undo.append(lambda: asyncio.to_thread(drv.purge, host))
        made = await asyncio.to_thread(drv.create, spec)
        made["volatile.last_state.power"] = "STOPPED"
        final = {**creating.with_config(rec, made), "status": "Stopped"}
        await _snapshot_records(ctx, final, info, undo)
        faults.point("import:before_done")
        await mutate(ctx.instances, k, lambda _r: final)
        return final
    except BaseException:
        await creating.undo_all(ctx, undo, k, rec)
        raise


def _without(rec: dict[str, Any], name: str) -> dict[str, Any]:
    return {**rec, "config": {k: v for k, v in rec["config"].items() if k != name},
            "expanded_config": {k: v for k, v in rec["expanded_config"].items() if k != name}}


async def _snapshot_records(ctx: Context, rec: dict[str, Any], info: dict[str, Any],
                            undo: list[Any]) -> None:
    """The snapshots' records (``snapshots.py`` shape), from index.yaml's config."""
    if ctx.snapshots is None:
        return
    by_name = {s.get("name"): s for s in (info["config"].get("snapshots") or [])
               if isinstance(s, dict)}
    profiles_cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for snap in info["snapshots"]:
        src = by_name.get(snap) or {}
        config = clean_config(src.get("config") if "config" in src else rec["config"])
        devices = src.get("devices") if isinstance(src.get("devices"), dict) else \
            rec["devices"]
        profs = src.get("profiles") if isinstance(src.get("profiles"), list) else \
            rec["profiles"]
        pkey = tuple(profs)
        if pkey not in profiles_cache:
            try:
                profiles_cache[pkey] = await creating.expand_profiles(ctx, rec["project"],
                                                                      list(profs))
            except CorralError:
                profiles_cache[pkey] = await creating.expand_profiles(
                    ctx, rec["project"], rec["profiles"])
        ecfg, edevs = records.expand(profiles_cache[pkey], config, devices)
        snap_rec = {"project": rec["project"], "instance": rec["name"], "name": snap,
                    "type": rec["type"], "architecture": src.get("architecture") or
                    rec["architecture"], "config": config, "devices": devices,
                    "profiles": list(profs), "expanded_config": ecfg,
                    "expanded_devices": edevs, "ephemeral": bool(src.get("ephemeral")),
                    "stateful": False, "description": src.get("description") or "",
                    "created_at": src.get("created_at") or lxd_time(),
                    "expires_at": src.get("expires_at") or NO_EXPIRY,
                    "last_used_at": src.get("last_used_at") or "1970-01-01T00:00:00Z",
                    "pool": rec["pool"]}
        sk = snapshot_key(rec["project"], rec["name"], snap)
        await ctx.snapshots.put(sk, snap_rec)
        undo.append(lambda sk=sk: ctx.snapshots.delete(sk))  # type: ignore[union-attr]


async def discard(transfers: Any, obj: str) -> None:
    """The staged tarball is ours once the import started: gone when it ends (a staged
    directory is its sender's to remove)."""
    if not obj:
        return
    try:
        await blobs.delete(transfers, obj)
    except Exception:
        pass
