"""Make KV and the host agree after a (re)start: the host is the truth.

- a record stuck in "Creating" is a create that died with the process: remove what it
  made (driver definition, root volume) and the record;
- anything a driver has on the host (an LXC directory, a VM directory, even half-written)
  without a record of that type was never finished: purge it;
- every other record takes its status from the host (running instances stay managed);
- VMs likewise, with libvirt as the truth: a running VM stays running and managed across
  a restart of this service. When libvirtd does not answer, VM records and directories
  are left alone (we cannot tell what runs).
The storage service may start after us, so volume removal retries in the background.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.errors import CorralError, NotFound, Unavailable
from shared.state import key, mutate

from .context import Context
from .drivers.router import type_of

RETRIES = 60


async def reconcile(ctx: Context) -> list[asyncio.Task[None]]:
    records = list(ctx.instances.cached())
    host: dict[str, str] = {}
    drivers = {}
    for drv in await asyncio.to_thread(ctx.drivers.all_available):
        kind = drv.capabilities.instance_type
        drivers[kind] = drv
        host.update(await asyncio.to_thread(drv.list_host))
        mine = {r["name"] for r in records if type_of(r) == kind}
        for name in await asyncio.to_thread(drv.names_on_host):
            if name not in mine:
                ctx.log.warning("removing an instance without a record", instance=name,
                                type=kind)
                await asyncio.to_thread(drv.purge, name)
    tasks = []
    for rec in records:
        drv = drivers.get(type_of(rec))
        if rec.get("status") == "Creating":
            if drv is None:
                continue  # cannot tell what the create left; try at next start
            ctx.log.warning("cleaning up an instance whose create was interrupted",
                            instance=rec["name"], project=rec["project"])
            await asyncio.to_thread(drv.purge, rec["name"])
            tasks.append(asyncio.create_task(_finish(ctx, rec)))
        elif rec["name"] in host and host[rec["name"]] != rec.get("status"):
            status = host[rec["name"]]
            await mutate(ctx.instances, key(rec["project"], rec["name"]),
                         lambda r, s=status: {**r, "status": s})
    return tasks


async def _finish(ctx: Context, rec: dict[str, Any]) -> None:
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
            await asyncio.sleep(1.0)
        except CorralError as exc:
            ctx.log.warning("volume cleanup failed", instance=rec["name"], error=exc.message)
            await asyncio.sleep(1.0)
    else:
        ctx.log.error("gave up removing the volume of an interrupted create",
                      instance=rec["name"], pool=rec.get("pool"))
        return
    await ctx.instances.delete(key(rec["project"], rec["name"]))
    ctx.log.info("interrupted create cleaned up", instance=rec["name"])
