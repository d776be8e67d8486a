"""A launch (create + start in one operation) starts with the NICs its create resolved:
the network service is asked once, the definition written once."""

from __future__ import annotations

import dataclasses

from services.instance import create, lifecycle

from .test_instance_create import BODY, FakeDriver, FakeRouter, make, run


class StartingDriver(FakeDriver):
    def update(self, name, config, devices, nics=None, disks=None) -> None:
        self.calls.append("update")

    def start(self, name: str) -> None:
        self.calls.append("start")


class Router(FakeRouter):
    def for_instance(self, rec):
        return self.drv


def _ctx():
    ctx, calls, drv = make()
    drv.__class__ = StartingDriver
    return dataclasses.replace(ctx, drivers=Router(drv)), calls


def test_launch_asks_the_nics_once_and_defines_once() -> None:
    ctx, calls = _ctx()
    rec, image = run(create.prepare(ctx, BODY, "default"))
    nics: list = []
    made = run(create.build(ctx, rec, image, nics))
    assert [n.host_name for n in nics] == ["veth00000001"]
    final = run(lifecycle.start(ctx, made, fresh_nics=nics))
    assert calls == ["volume", "nic", "define", "start"]
    assert final["status"] == "Running"
    assert final["config"]["volatile.last_state.power"] == "RUNNING"
    assert final["config"]["volatile.eth0.hwaddr"] == "00:16:3e:00:00:01"


def test_a_later_start_asks_the_network_service_again() -> None:
    """The network may have changed while the instance was stopped."""
    ctx, calls = _ctx()
    rec, image = run(create.prepare(ctx, BODY, "default"))
    made = run(create.build(ctx, rec, image))
    calls.clear()
    run(lifecycle.start(ctx, made))
    assert calls == ["nic", "update", "start"]
