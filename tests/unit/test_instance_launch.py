"""A launch (create, then start) starts with the NICs its create resolved: the network
service is asked once, the definition written once."""

from __future__ import annotations

import dataclasses

from services.instance import create, lifecycle

from .test_instance_create import BODY, FakeDriver, FakeRouter, K, make, run


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
    """The stock client's launch: a create, then a start in its own request."""
    ctx, calls = _ctx()
    rec, image = run(create.prepare(ctx, BODY, "default"))
    made = run(create.build(ctx, rec, image))
    stored = ctx.instances.data[K][0]  # what the start request reads
    final = run(lifecycle.start(ctx, stored))
    assert calls == ["volume", "nic", "define", "start"]
    assert final["status"] == "Running" and made["status"] == "Stopped"
    assert final["config"]["volatile.last_state.power"] == "RUNNING"
    assert final["config"]["volatile.eth0.hwaddr"] == "00:16:3e:00:00:01"


def test_a_later_start_asks_the_network_service_again() -> None:
    """Once used, or when the record changed since the create, or too late: the network
    may have changed, and the definition must follow the record."""
    ctx, calls = _ctx()
    rec, image = run(create.prepare(ctx, BODY, "default"))
    made = run(create.build(ctx, rec, image))
    run(lifecycle.start(ctx, made))
    calls.clear()
    run(lifecycle.start(ctx, made))  # the second start of the same instance
    assert calls == ["nic", "update", "start"]

    create.remember_defined(made, [])
    changed = {**made, "expanded_config": {**made["expanded_config"], "limits.cpu": "1"}}
    calls.clear()
    run(lifecycle.start(ctx, changed))  # `lxc config set` between create and start
    assert calls == ["nic", "update", "start"]

    create.remember_defined(made, [])
    key = next(iter(create._DEFINED))
    t, inputs, nics = create._DEFINED[key]
    create._DEFINED[key] = (t - create.FRESH_SECONDS - 1, inputs, nics)
    calls.clear()
    run(lifecycle.start(ctx, made))
    assert calls == ["nic", "update", "start"]
