"""Reconcile after a restart, with fake drivers: the host is the truth.

Orphans (host objects without a record of their type) are purged, interrupted creates are
purged and their volume and record removed, other records take the host's status.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.instance import reconcile
from services.instance.context import Context
from services.instance.drivers.base import Capabilities
from shared.state import key

from .test_instance_create import FakeStore, Log


class FakeDriver:
    def __init__(self, kind: str, host: dict[str, str], dirs: list[str]) -> None:
        self.capabilities = Capabilities(instance_type=kind)
        self.host, self.dirs, self.purged = host, dirs, []

    def list_host(self) -> dict[str, str]:
        return dict(self.host)

    def names_on_host(self) -> list[str]:
        return list(self.dirs)

    def purge(self, name: str) -> None:
        self.purged.append(name)

    def disks_pending(self, name: str) -> None:
        return None  # no disk hot-plug was interrupted


class FakeRouter:
    def __init__(self, *drivers: FakeDriver) -> None:
        self.drivers = list(drivers)

    def all_available(self) -> list[FakeDriver]:
        return self.drivers


class FakeRemote:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    async def volume_delete(self, project, pool, name, kind):
        self.deleted.append((name, kind))


class InfoLog(Log):
    def info(self, msg: str, **kw: Any) -> None:
        pass

    error = info


def rec(name: str, status: str, kind: str = "container") -> dict[str, Any]:
    return {"name": name, "project": "default", "status": status, "type": kind, "pool": "p"}


def test_reconcile_purges_orphans_and_interrupted_creates_and_syncs_status() -> None:
    lxc = FakeDriver("container", {"run": "Running", "orphan": "Stopped", "half": "Stopped"},
                     ["run", "orphan", "half", "vm1"])
    qemu = FakeDriver("virtual-machine", {"vm1": "Running"}, ["vm1", "lost"])
    store = FakeStore()
    for r in (rec("run", "Stopped"), rec("half", "Creating"),
              rec("vm1", "Stopped", "virtual-machine"), rec("gone", "Running")):
        store.data[key("default", r["name"])] = (r, 1)
    remote = FakeRemote()
    ctx = Context(instances=store, profiles=None, remote=remote,
                  drivers=FakeRouter(lxc, qemu), log=InfoLog())

    async def go() -> None:
        tasks = await reconcile.reconcile(ctx)
        await asyncio.gather(*tasks)

    asyncio.run(go())
    # "vm1" is a VM record: an LXC directory of that name is an orphan of the LXC driver
    assert sorted(lxc.purged) == ["half", "orphan", "vm1"] and qemu.purged == ["lost"]
    assert remote.deleted == [("half", "container")]
    assert key("default", "half") not in store.data
    assert store.data[key("default", "run")][0]["status"] == "Running"
    assert store.data[key("default", "vm1")][0]["status"] == "Running"
    assert store.data[key("default", "gone")][0]["status"] == "Running"  # host silent: kept


def test_vm_records_left_alone_without_libvirt() -> None:
    lxc = FakeDriver("container", {}, [])
    store = FakeStore()
    store.data[key("default", "v")] = (rec("v", "Creating", "virtual-machine"), 1)
    ctx = Context(instances=store, profiles=None, remote=FakeRemote(),
                  drivers=FakeRouter(lxc), log=InfoLog())
    assert asyncio.run(reconcile.reconcile(ctx)) == []
    assert store.data[key("default", "v")][0]["status"] == "Creating"
