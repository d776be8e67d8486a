"""Live migration of a running VM to another cluster member through libvirt.

The gateway (services/gateway/vm_live_move.py) drives four steps, each answered by the
instance service of one member; this module is their logic:

1. ``prepare`` on the target: the root volume from the same image through the target's
   own storage service, under a temporary name (volume records are cluster-wide, keyed by
   pool and name, and the source's still exists), grown to the root disk's size; the
   driver's spec directory; the paths the domain will use there and the target libvirtd's
   URI and link address.
2. ``send`` on the source: libvirt's peer-to-peer live migration of the running domain to
   the target's libvirtd (``migrateToURI3``, LIVE|PEER2PEER|PERSIST_DEST|NON_SHARED_INC):
   QEMU's stream goes straight to the target's QEMU over the members' link, the disk's top
   layer is mirrored over NBD while the guest runs (no shared storage), and the domain's
   XML is the source's with its paths moved to the target's. On failure libvirt resumes
   the guest on the source; the gateway then calls ``abort`` on the target.
3. ``cleanup`` on the source, once the target runs it: the defined-but-inactive domain,
   the spec directory and the volume go.
4. ``finish`` on the target: the volume gets the instance's name, the spec is rewritten
   with the final paths (the next start renders from it), the record is located here.

Why not libvirt's TUNNELLED mode: it cannot carry the NBD disk mirror, and the disks must
move (no shared storage between members here).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound, Unavailable
from shared.messages.storage import VolumeRenameRequest
from shared.state import key, mutate

from .context import Context
from .names import host_name

KIND = "virtual-machine"
DISK = "root.qcow2"
SUFFIX = "-livemig"  # the temporary name of the target's volume
VOLUME_LINK = "volume"  # in the target's spec directory: the link the domain's disk uses


def _flags() -> int:
    import libvirt

    # Live, peer to peer (the source libvirtd talks to the target's), the domain defined on
    # the target, disks copied (only the overlay: the image is there too).
    # AUTO_CONVERGE: a guest dirtying memory faster than the link carries it is slowed
    # down until the copy converges, instead of a migration that never ends.
    return (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_NON_SHARED_INC
            | libvirt.VIR_MIGRATE_AUTO_CONVERGE)


def temp_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def link_address() -> str:
    """This member's address on the cluster link (CORRAL_CLUSTER_ADDRESS without port):
    where the source QEMU connects for the memory stream and the disk mirror."""
    addr = os.environ.get("CORRAL_CLUSTER_ADDRESS", "")
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    if not host:
        raise BadRequest("This member has no cluster address (CORRAL_CLUSTER_ADDRESS): "
                         "live migration needs the members' link")
    return host.strip("[]")


def _qemu(ctx: Context) -> Any:
    return ctx.drivers.for_type(KIND)


def check_movable(rec: dict[str, Any]) -> None:
    """Only what the migration carries: a VM with its root disk (extra disks would need
    their volumes made and mirrored too)."""
    if rec.get("type") != KIND:
        raise BadRequest(f"Instance {rec['name']!r} is not a virtual machine: live "
                         "migration moves running VMs only")
    extra = [n for n, d in (rec.get("expanded_devices") or {}).items()
             if d.get("type") == "disk" and d.get("path") != "/"]
    if extra:
        raise BadRequest(f"Live migration of VMs with extra disks ({', '.join(extra)}) is "
                         "not supported yet; detach them or stop the VM and move it")


# ---- 1. target ----------------------------------------------------------------------------

async def prepare(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """Make the target's volume and spec directory; returns where the domain will live."""
    from .drivers import qemu

    check_movable(rec)
    project, name, pool = rec["project"], rec["name"], rec["pool"]
    if rec.get("location") == ctx.location:
        raise BadRequest(f"Instance {name!r} is located on {ctx.location} already")
    fp = (rec.get("config") or {}).get("volatile.base_image") or \
        (rec.get("expanded_config") or {}).get("volatile.base_image")
    if not fp:
        raise BadRequest(f"Instance {name!r} has no volatile.base_image: its disk cannot be "
                         "migrated onto the image")
    drv = _qemu(ctx)
    await asyncio.to_thread(_answers, drv, ctx.location)
    host = host_name(project, name)
    if drv._dir(host).exists() or await asyncio.to_thread(_has_domain, drv, host):
        raise Conflict(f"Instance {name!r} already has a libvirt domain or a directory on "
                       f"{ctx.location}; remove it there first")
    tmp = temp_name(name)
    path = Path(await ctx.remote.volume_from_image(project, pool, tmp, fp, KIND))
    try:
        if not (path / DISK).exists():  # a snapshot of the image (btrfs): as create does
            await asyncio.to_thread(qemu.qemu_host.qemu_img, "create", "-q", "-f", "qcow2",
                                    "-F", "qcow2", "-b", qemu.IMAGE, str(path / DISK))
        size = qemu._root_size(rec.get("expanded_devices") or {})
        if size:
            await asyncio.to_thread(qemu._grow, path / DISK, size)
        vmdir = await asyncio.to_thread(drv._make_dir, host)
        await asyncio.to_thread(point_volume, vmdir, path)
    except BaseException:
        await ctx.remote.volume_delete(project, pool, tmp, KIND)
        raise
    return {"node": ctx.location, "uri": drv.uri, "address": link_address(),
            "volume": str(vmdir / VOLUME_LINK), "vmdir": str(vmdir),
            "agent_socket": qemu._socket_path(vmdir)}


def point_volume(vmdir: Path, volume: Path) -> None:
    """``vmdir/volume`` -> the volume, replaced atomically. Why: the migrated domain opens
    its disk through this link, and the volume is renamed under it once the source is
    gone; QEMU reopens image files BY NAME when it changes their access mode (it does when
    it migrates again), so a path with the temporary name would fail that migration
    ("bdrv_inactivate_all() failed"), while the link is re-pointed at the new name."""
    link = vmdir / VOLUME_LINK
    tmp = vmdir / f".{VOLUME_LINK}.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(volume)
    os.replace(tmp, link)


async def abort(ctx: Context, rec: dict[str, Any]) -> None:
    """Undo ``prepare`` (and a domain a failed migration left here): nothing stays."""
    host = host_name(rec["project"], rec["name"])
    try:  # libvirtd may be what failed: the directory and the volume go all the same
        await asyncio.to_thread(_drop_domain, _qemu(ctx), host)
    except Exception as exc:  # libvirt's own errors too: what is on disk goes regardless
        ctx.log.warning("live migration abort: domain not checked", instance=host,
                        error=str(exc))
    await asyncio.to_thread(_rmtree, Path(ctx.drivers.vmpath).resolve() / host)
    try:
        await ctx.remote.volume_delete(rec["project"], rec["pool"], temp_name(rec["name"]),
                                       KIND)
    except NotFound:
        pass


def _answers(drv: Any, node: str) -> None:
    """503 unless this member's libvirtd answers now (a cached connection may not know
    yet that its daemon is gone): nothing is made for a target that cannot receive."""
    import libvirt

    try:
        drv.conn.getHostname()
    except libvirt.libvirtError as e:
        raise Unavailable(f"libvirtd on {node} does not answer: {e.get_error_message()}; "
                          "the VM stays where it runs") from None


def _has_domain(drv: Any, host: str) -> bool:
    import libvirt

    try:
        drv.conn.lookupByName(host)
        return True
    except libvirt.libvirtError:
        return False


def _drop_domain(drv: Any, host: str) -> None:
    import libvirt

    try:
        dom = drv.conn.lookupByName(host)
    except libvirt.libvirtError:
        return
    try:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---- 2. source ----------------------------------------------------------------------------

def dest_xml(xml: str, moves: list[tuple[str, str]]) -> str:
    """The domain XML with each source path moved to the target's (whole path components
    only: ``/x/v1`` never rewrites ``/x/v10``)."""
    for old, new in moves:
        if old and old != new:
            xml = re.sub(re.escape(old) + r"(?=[/\"'<])", new.replace("\\", r"\\"), xml)
    return xml


def root_volume(xml: str) -> str | None:
    """The directory of the root disk (vda) in a domain's XML."""
    import xml.etree.ElementTree as ET

    for disk in ET.fromstring(xml).findall("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and target.get("dev") == "vda" and source is not None \
                and source.get("file"):
            return str(Path(source.get("file", "")).parent)
    return None


def send_blocking(drv: Any, host: str, target: dict[str, Any]) -> dict[str, Any]:
    """Migrate the running domain ``host`` to ``target`` (what ``prepare`` answered);
    returns libvirt's job statistics. On failure the guest runs on here as before."""
    import libvirt

    try:
        dom = drv.conn.lookupByName(host)
    except libvirt.libvirtError:
        raise NotFound(f"Instance {host!r} has no libvirt domain here") from None
    if not dom.isActive():
        raise BadRequest(f"Instance {host!r} is not running: live migration moves running "
                         "VMs (stop mode moves stopped ones)")
    data = drv._load(host)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    # The volume's path as the running domain uses it: a VM that came here live keeps the
    # temporary name it was started under until its next start (the spec has the final).
    moves = [(data["agent_socket"], target["agent_socket"]),
             (root_volume(xml) or str(Path(data["rootfs_path"])), target["volume"]),
             (str(drv._dir(host)), target["vmdir"])]
    xml = dest_xml(xml, moves)
    params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
              libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{target['address']}",
              libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: target["address"]}
    started = time.monotonic()
    try:
        dom.migrateToURI3(target["uri"], params, _flags())
    except libvirt.libvirtError as e:
        _resume(dom)
        raise Conflict(f"Live migration of {host!r} to {target['node']} failed: "
                       f"{e.get_error_message()}; it keeps running here") from None
    wall = time.monotonic() - started
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}
    return {"downtime_ms": stats.get("downtime"),
            "total_time_ms": stats.get("time_elapsed", round(wall * 1000)),
            "data_total": stats.get("data_total"),
            "memory_iterations": stats.get("memory_iteration"),
            "wall_time_ms": round(wall * 1000), "spec": data}


def _resume(dom: Any) -> None:
    import libvirt

    try:
        if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
    except libvirt.libvirtError:
        pass


async def send(ctx: Context, rec: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    check_movable(rec)
    if target.get("node") == ctx.location:
        raise BadRequest(f"Instance {rec['name']!r} already runs on {ctx.location}")
    return await asyncio.to_thread(send_blocking, _qemu(ctx),
                                   host_name(rec["project"], rec["name"]), target)


async def cleanup(ctx: Context, rec: dict[str, Any]) -> None:
    """After the target runs it: the inactive domain here, its spec and its volume go."""
    drv = _qemu(ctx)
    host = host_name(rec["project"], rec["name"])
    await asyncio.to_thread(_drop_domain, drv, host)
    await asyncio.to_thread(_rmtree, drv._dir(host))
    try:
        await ctx.remote.volume_delete(rec["project"], rec["pool"], rec["name"], KIND)
    except NotFound:
        pass


# ---- 4. target ----------------------------------------------------------------------------

async def finish(ctx: Context, rec: dict[str, Any], target: dict[str, Any],
                 spec: dict[str, Any]) -> dict[str, Any]:
    """The volume takes the instance's name, the spec its final paths, the record this
    member as location. Returns the record."""
    drv = _qemu(ctx)
    project, name, pool = rec["project"], rec["name"], rec["pool"]
    host = host_name(project, name)
    volume, warning = str(Path(target["volume"]).resolve()), ""
    try:
        req = VolumeRenameRequest(project=project, pool=pool, name=temp_name(name),
                                  new_name=name, kind=KIND)
        reply = await ctx.remote.bus.request("storage", "volume_rename", req,
                                             node=ctx.remote.node, timeout=60)
        volume = reply.metadata["path"]
    except CorralError as exc:  # the source's volume is still there: keep the temp name
        warning = f"the volume keeps the name {temp_name(name)}: {exc.message}"
    await asyncio.to_thread(point_volume, Path(target["vmdir"]), Path(volume))
    data = {**spec, "rootfs_path": volume, "agent_socket": target["agent_socket"]}
    await asyncio.to_thread(_save_spec, drv, host, data)

    def located(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "location": ctx.location, "volume": volume}

    final = await mutate(ctx.instances, key(project, name), located)
    return {"record": final, "warning": warning}


def _save_spec(drv: Any, host: str, data: dict[str, Any]) -> None:
    """The spec and the persistent definition with the final paths (the running domain
    keeps its open files; the next start renders from this spec)."""
    import libvirt

    drv._save(host, data)
    try:
        drv.conn.defineXML(drv._render(host, data))
    except libvirt.libvirtError as e:
        raise Internal(f"The migrated domain {host!r} could not be redefined: "
                       f"{e.get_error_message()}") from None


# ---- at the instance service's start --------------------------------------------------------

async def arriving(ctx: Context) -> set[str]:
    """The VMs (host names) a live move's journal (the gateway's ``moves`` bucket,
    services/gateway/move_journal.py) says were sent, or are being sent, to this member:
    their record still says the source until that gateway finishes the move, and the
    start's reconcile must not purge the guest that runs here (its data would be lost)."""
    from shared import codec

    if not ctx.node:
        return set()
    moves: dict[str, Any] = {}
    try:  # not shared.state.Store: it would try to create a missing bucket for 30 s
        kv = await asyncio.wait_for(ctx.remote.bus.js.key_value("moves"), 5)
        for k in await asyncio.wait_for(kv.keys(), 5):
            entry = await kv.get(k)
            if entry.value:
                moves[k] = codec.decode(entry.value)
    except Exception as exc:  # no bucket (no move ever), no keys, or not readable: none
        ctx.log.debug("moves journal not read", error=str(exc))
        return set()
    return {host_name(r["project"], r["name"]) for r in moves.values()
            if r.get("kind") == "live" and r.get("stage") in ("send", "sent")
            and r.get("target") == ctx.node}


async def reconcile(ctx: Context) -> int:
    """Remove the temporary volumes (``<name>-livemig``) a live migration left on this
    member when it died half-way (the gateway, this service, the member): the generic
    reconcile already purged the spec directory and domain that had no record here.
    Only volumes whose data is on THIS member and whose instance is not located here are
    removed (volume records are cluster-wide: another member's are not ours). Returns how
    many. Best effort: a storage service not answering yet leaves them to the next start."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from shared.messages.storage import VolumeListRequest, VolumePathRequest
    from shared.models import ListRequest

    if not ctx.node:
        return 0
    bus, node, removed = ctx.remote.bus, ctx.remote.node, 0
    try:
        pools = (await bus.request("storage", "list", ListRequest(), node=node)).metadata
        for pool_url in pools or []:
            pool = unquote(urlsplit(pool_url).path.rsplit("/", 1)[1])
            vols = (await bus.request("storage", "volume_list", VolumeListRequest(
                pool=pool, kind=KIND, all_projects=True), node=node)).metadata
            for vol_url in vols or []:
                parts = urlsplit(vol_url)
                tmp = unquote(parts.path.rsplit("/", 1)[1])
                project = (parse_qs(parts.query).get("project") or ["default"])[0]
                if not tmp.endswith(SUFFIX):
                    continue
                rec = await ctx.instances.get(key(project, tmp[:-len(SUFFIX)]))
                if rec is not None and rec[0].get("location") == ctx.node:
                    continue  # finished here (its rename failed): the record names it
                path = (await bus.request("storage", "volume_path", VolumePathRequest(
                    project=project, pool=pool, kind=KIND, name=tmp),
                    node=node)).metadata["path"]
                if not await asyncio.to_thread(Path(path).exists):
                    continue  # another member's
                vmdir = Path(ctx.drivers.vmpath).resolve() / host_name(
                    project, tmp[:-len(SUFFIX)])
                if await asyncio.to_thread(vmdir.exists):
                    continue  # a prepare since this start (the stale ones were purged)
                ctx.log.warning("removing what an interrupted live migration left",
                                volume=tmp, pool=pool, project=project)
                await ctx.remote.volume_delete(project, pool, tmp, KIND)
                removed += 1
    except CorralError as exc:
        ctx.log.warning("live migration leftovers not checked", error=exc.message)
    return removed

