"""Make KV and the host agree after a (re)start: the host is the truth.

- a record stuck in "Creating" is a create that died with the process: remove what it
  made (LXC definition, root volume) and the record;
- an LXC definition under our lxcpath without a record (or a half-written one, without
  ``corral.json``) was never finished: destroy it;
- every other record takes its status from the host (running containers stay managed);
- VMs likewise, with libvirt as the truth (``QemuDriver.list_host``): a running VM stays
  running and managed across a restart of this service. When libvirtd does not answer,
  VM records and directories are left alone (we cannot tell what runs).
The storage service may start after us, so volume removal retries in the background.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING, Any

import lxc

from shared.errors import CorralError, NotFound, Unavailable
from shared.state import key, mutate

from .drivers.lxc import SPEC_FILE

if TYPE_CHECKING:
    from .service import InstanceService

RETRIES = 60


def _destroy(driver: Any, name: str) -> None:
    c = lxc.Container(name, str(driver.lxcpath))
    if c.defined and c.running:
        c.stop()
        c.wait("STOPPED", 10)
    if (driver.lxcpath / name / SPEC_FILE).exists():
        try:
            driver.delete(name)
            return
        except CorralError:
            pass
    shutil.rmtree(driver.lxcpath / name, ignore_errors=True)


def _destroy_vm(qemu: Any, name: str) -> None:
    """Force off and undefine a VM of ours, then drop its directory."""
    try:
        dom = qemu.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
    except Exception:
        pass
    try:
        qemu.delete(name)
    except CorralError:
        shutil.rmtree(qemu.vmpath / name, ignore_errors=True)


def _vm_dirs(qemu: Any) -> list[str]:
    if not qemu.vmpath.is_dir():
        return []
    return sorted(p.name for p in qemu.vmpath.iterdir() if p.is_dir())


async def reconcile(svc: "InstanceService") -> list[asyncio.Task[None]]:
    drv = svc.driver
    lxc_drv = getattr(drv, "lxc", drv)
    host = await asyncio.to_thread(lxc_drv.list_host)
    qemu = await asyncio.to_thread(drv.qemu_or_none) if hasattr(drv, "qemu_or_none") else None
    if qemu is not None:
        host.update(await asyncio.to_thread(qemu.list_host))
    records = list(svc.instances.cached())
    names = {r["name"] for r in records}
    vms = {r["name"] for r in records if r.get("type") == "virtual-machine"}
    for d in await asyncio.to_thread(lambda: sorted(p.name for p in lxc_drv.lxcpath.iterdir()
                                                    if p.is_dir())):
        if d not in names:
            svc.log.warning("removing an LXC container without a record", instance=d)
            await asyncio.to_thread(_destroy, lxc_drv, d)
    if qemu is not None:
        for d in await asyncio.to_thread(_vm_dirs, qemu):
            if d not in vms:
                svc.log.warning("removing a VM without a record", instance=d)
                await asyncio.to_thread(_destroy_vm, qemu, d)
    tasks = []
    for rec in records:
        is_vm = rec["name"] in vms
        if rec.get("status") == "Creating":
            if is_vm and qemu is None:
                continue  # cannot tell what the VM's create left; try at next start
            svc.log.warning("cleaning up an instance whose create was interrupted",
                            instance=rec["name"], project=rec["project"])
            if is_vm:
                await asyncio.to_thread(_destroy_vm, qemu, rec["name"])
            elif rec["name"] in host or (lxc_drv.lxcpath / rec["name"]).exists():
                await asyncio.to_thread(_destroy, lxc_drv, rec["name"])
            tasks.append(asyncio.create_task(_finish(svc, rec)))
        elif rec["name"] in host and host[rec["name"]] != rec.get("status"):
            status = host[rec["name"]]
            await mutate(svc.instances, key(rec["project"], rec["name"]),
                         lambda r, s=status: {**r, "status": s})
    return tasks


async def _finish(svc: "InstanceService", rec: dict[str, Any]) -> None:
    """Delete the volume (waiting for the storage service), then the record."""
    for _ in range(RETRIES):
        try:
            if rec.get("pool"):
                await svc.remote.volume_delete(rec["project"], rec["pool"], rec["name"],
                                               rec.get("type", "container"))
            break
        except NotFound:
            break
        except Unavailable:
            await asyncio.sleep(1.0)
        except CorralError as exc:
            svc.log.warning("volume cleanup failed", instance=rec["name"], error=exc.message)
            await asyncio.sleep(1.0)
    else:
        svc.log.error("gave up removing the volume of an interrupted create",
                      instance=rec["name"], pool=rec.get("pool"))
        return
    await svc.instances.delete(key(rec["project"], rec["name"]))
    svc.log.info("interrupted create cleaned up", instance=rec["name"])
