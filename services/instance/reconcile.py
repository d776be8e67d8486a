"""Make KV and the host agree after a (re)start: the host is the truth.

- a record stuck in "Creating" is a create that died with the process: remove what it
  made (LXC definition, root volume) and the record;
- an LXC definition under our lxcpath without a record (or a half-written one, without
  ``corral.json``) was never finished: destroy it;
- every other record takes its status from the host (running containers stay managed).
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


async def reconcile(svc: "InstanceService") -> list[asyncio.Task[None]]:
    host = await asyncio.to_thread(svc.driver.list_host)
    records = list(svc.instances.cached())
    names = {r["name"] for r in records}
    for d in await asyncio.to_thread(lambda: sorted(p.name for p in svc.driver.lxcpath.iterdir()
                                                    if p.is_dir())):
        if d not in names:
            svc.log.warning("removing an LXC container without a record", instance=d)
            await asyncio.to_thread(_destroy, svc.driver, d)
    tasks = []
    for rec in records:
        if rec.get("status") == "Creating":
            svc.log.warning("cleaning up an instance whose create was interrupted",
                            instance=rec["name"], project=rec["project"])
            if rec["name"] in host or (svc.driver.lxcpath / rec["name"]).exists():
                await asyncio.to_thread(_destroy, svc.driver, rec["name"])
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
                await svc.remote.volume_delete(rec["project"], rec["pool"], rec["name"])
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
