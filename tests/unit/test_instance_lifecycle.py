"""State-change rules, live-change refusals read from driver capabilities, the router."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.instance import lifecycle, update
from services.instance.context import Context
from services.instance.drivers.base import Capabilities
from services.instance.drivers.router import DriverRouter
from shared.errors import BadRequest

ALL = ("start", "stop", "restart", "freeze", "unfreeze")
ALLOWED = {"Stopped": {"start"}, "Running": {"stop", "restart", "freeze"},
           "Frozen": {"stop", "restart", "unfreeze"}}


@pytest.mark.parametrize("status", sorted(ALLOWED))
def test_state_change_rules(status: str) -> None:
    for action in ALL:
        if action in ALLOWED[status]:
            lifecycle.check_action(status, action)
        else:
            with pytest.raises(BadRequest):
                lifecycle.check_action(status, action)


def test_lxd_messages() -> None:
    with pytest.raises(BadRequest, match="already running"):
        lifecycle.check_action("Running", "start")
    with pytest.raises(BadRequest, match="already stopped"):
        lifecycle.check_action("Stopped", "stop")
    with pytest.raises(BadRequest, match="not frozen"):
        lifecycle.check_action("Running", "unfreeze")


def test_freeze_refused_when_the_driver_cannot() -> None:
    with pytest.raises(BadRequest, match="cannot pause it"):
        lifecycle.check_action("Running", "freeze", can_freeze=False)
    lifecycle.check_action("Running", "stop", can_freeze=False)


VM_CAPS = Capabilities(instance_type="virtual-machine",
                       live_limits=frozenset({"limits.cpu", "limits.memory"}))


def test_live_limits_only_those_the_driver_can_change() -> None:
    update.check_live(VM_CAPS, "Running", {"limits.cpu": "2", "limits.memory": "1GiB"})
    with pytest.raises(BadRequest) as err:
        update.check_live(VM_CAPS, "Running", {"limits.processes": "50", "limits.cpu": "2"})
    assert err.value.code == 400
    assert "limits.processes cannot change while this virtual machine runs" in err.value.message
    with pytest.raises(BadRequest):
        update.check_live(VM_CAPS, "Frozen", {"limits.memory.swap": "false"})
    update.check_live(VM_CAPS, "Stopped", {"limits.processes": "50"})  # applies at start


class FakeDriver:
    capabilities = Capabilities(instance_type="container", freeze=False)

    def host_status(self, name: str) -> str:
        return {"c1": "Running"}.get(name, "Stopped")


def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DriverRouter:
    monkeypatch.setenv("CORRAL_VM", "0")  # as on a host without libvirtd
    return DriverRouter(FakeDriver(), tmp_path / "vms")


def test_router_hands_out_the_record_driver(tmp_path, monkeypatch) -> None:
    r = router(tmp_path, monkeypatch)
    assert r.for_instance({"name": "c1"}) is r.for_type("container")
    assert r.for_instance({"name": "c1", "type": "container"}).host_status("c1") == "Running"
    with pytest.raises(BadRequest, match="libvirtd"):
        r.for_instance({"name": "v1", "type": "virtual-machine"})
    with pytest.raises(BadRequest, match="Invalid instance type"):
        r.for_type("kvm")
    assert r.host_status({"name": "v1", "type": "virtual-machine"}) == "Error"
    assert not hasattr(r, "__getattr__") and not r.vm_available()


def test_change_reads_the_freeze_capability(tmp_path, monkeypatch) -> None:
    ctx = Context(instances=None, profiles=None, remote=None,
                  drivers=router(tmp_path, monkeypatch), log=None)
    with pytest.raises(BadRequest, match="cannot pause"):
        asyncio.run(lifecycle.check(ctx, {"name": "c1", "type": "container"}, "freeze"))
    with pytest.raises(BadRequest, match="already running"):
        asyncio.run(lifecycle.check(ctx, {"name": "c1", "type": "container"}, "start"))
