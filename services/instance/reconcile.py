"""Make KV and the host agree after a (re)start: the host is the truth.

- a record stuck in "Creating" is a create that died with the process: remove what it
  made (driver definition, root volume) and the record, so the name is free again;
- a record in "Deleting" is a delete that died half-way: finish it (driver definition,
  root volume, record), whatever part was already gone;
- anything a driver has on the host (an LXC directory, a VM directory, even half-written)
  without a record of that type was never finished: purge it;
- every other record takes its status from the host (running instances stay managed);
- a running instance whose disk hot-plug was interrupted gets its record's disks back;
- a move to another pool that died half-way (records with ``moving_to``/``moving_from``)
  is left alone here: ``move.resume_all`` finishes or undoes it, under the instance's
  lock, once the service answers (it needs the storage and network services);
- VMs likewise, with libvirt as the truth: a running VM stays running and managed across
  a restart of this service. When libvirtd does not answer, VM records and directories
  are left alone (we cannot tell what runs).
The storage service may start after us, so volume removal retries in the background
(:func:`retry_later`, also used by a create whose undo could not reach the storage service).
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.errors import CorralError, NotFound, Unavailable
from shared.state import key, mutate

from . import disks, snapshot_ops, vm_migrate
from .context import Context
from .drivers.router import type_of
from .names import host_of
from .records import nic_names

# Volume removal is retried every RETRY_DELAY seconds for this long, then left to the
# next start of the service (the record stays: it is the journal of what is left).
RETRIES = 900
RETRY_DELAY = 2.0
_pending: set[asyncio.Task[None]] = set()


def retry_later(ctx: Context, rec: dict[str, Any]) -> asyncio.Task[None]:
    """Remove an unfinished instance's volume and record in the background."""
    task = asyncio.create_task(finish_interrupted(ctx, rec))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def reconcile(ctx: Context) -> list[asyncio.Task[None]]:
    records = ctx.local()  # another node's instances are its own to repair
    host: dict[str, str] = {}
    drivers = {}
    arriving = await vm_migrate.arriving(ctx)  # a live move's guest runs here: keep it
    for drv in await asyncio.to_thread(ctx.drivers.all_available):
        kind = drv.capabilities.instance_type
        drivers[kind] = drv
        host.update(await asyncio.to_thread(drv.list_host))
        mine = {host_of(r) for r in records if type_of(r) == kind}
        for name in await asyncio.to_thread(drv.names_on_host):
            if name not in mine and name not in arriving:
                ctx.log.warning("removing an instance without a record", instance=name,
                                type=kind)
                await asyncio.to_thread(drv.purge, name)
    tasks = []
    # the records of a move that died half-way (see move.py's journal): move.resume_all()
    moving = {key(r["project"], r["name"]) for r in records
              if r.get("moving_to") or r.get("moving_from")}
    for rec in records:
        drv = drivers.get(type_of(rec))
        if key(rec["project"], rec["name"]) in moving:
            continue
        if rec.get("status") in ("Creating", "Deleting"):
            if drv is None:
                continue  # cannot tell what the create left; try at next start
            ctx.log.warning("cleaning up an instance whose create or delete was interrupted",
                            instance=rec["name"], project=rec["project"],
                            status=rec["status"])
            await asyncio.to_thread(drv.purge, host_of(rec))
            tasks.append(retry_later(ctx, rec))
        elif host_of(rec) in host and host[host_of(rec)] != rec.get("status"):
            status = host[host_of(rec)]
            await mutate(ctx.instances, key(rec["project"], rec["name"]),
                         lambda r, s=status: {**r, "status": s})
        if drv is not None and rec.get("status") not in ("Creating", "Deleting") and \
                host.get(host_of(rec)) in ("Running", "Frozen"):
            await disks.reconcile(ctx, rec, drv, host_of(rec))  # an interrupted hot-plug
    # Snapshot records a dead process left unfinished (creating, deleting, renaming).
    tasks.extend(await snapshot_ops.reconcile(ctx))
    return tasks


async def release_leases(ctx: Context, rec: dict[str, Any]) -> None:
    """Ask the network service to forget the DHCP leases of the instance's NICs on
    managed networks and remove the ifb devices that shaped them (best effort: a lease left
    behind only holds an address, an ifb only a name)."""
    cfg, devs = rec.get("expanded_config") or {}, rec.get("expanded_devices") or {}
    by_network: dict[str, tuple[list[str], list[str]]] = {}
    for dev in nic_names(devs):
        network = devs[dev].get("network") or devs[dev].get("parent")
        if not network:
            continue
        macs, host_names = by_network.setdefault(network, ([], []))
        if mac := cfg.get(f"volatile.{dev}.hwaddr"):
            macs.append(mac)
        if host_name := cfg.get(f"volatile.{dev}.host_name"):
            host_names.append(host_name)
    for network, (macs, host_names) in by_network.items():
        try:
            await ctx.remote.nic_release(rec["project"], network, macs, host_names)
        except CorralError as exc:
            ctx.log.warning("DHCP leases not released", instance=rec["name"],
                            network=network, error=exc.message)


async def finish_interrupted(ctx: Context, rec: dict[str, Any]) -> None:
    """Delete the volume (waiting for the storage service), then the record."""
    for _ in range(RETRIES):
        try:
            if rec.get("pool"):
                await ctx.remote.volume_delete(rec["project"], rec["pool"], rec["name"],
                                               type_of(rec))
            break
        except NotFound:
            break
        except Unavailable:
            await asyncio.sleep(RETRY_DELAY)
        except CorralError as exc:
            ctx.log.warning("volume cleanup failed", instance=rec["name"], error=exc.message)
            await asyncio.sleep(RETRY_DELAY)
    else:
        ctx.log.error("gave up removing the volume of an interrupted create",
                      instance=rec["name"], pool=rec.get("pool"))
        return
    await release_leases(ctx, rec)
    await snapshot_ops.forget_all(ctx, rec["project"], rec["name"])
    await ctx.instances.delete(key(rec["project"], rec["name"]))
    ctx.log.info("interrupted create or delete cleaned up", instance=rec["name"])
