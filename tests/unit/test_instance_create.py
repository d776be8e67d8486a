"""Create's checks and undo, with fakes for the store, the other services and the driver.

What matters: every step that was started (it may have left something even when it
failed, or when its answer never came) is undone in reverse when one fails, an undo step
that fails does not stop the others, and the KV record goes last, only when every undo
step worked: otherwise it stays "Creating" (the journal) and the cleanup is retried.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.instance import create
from services.instance.context import Context
from services.instance.drivers.base import Capabilities, InstanceSpec
from shared.errors import BadRequest, Conflict, Internal
from shared.messages.network import Nic, NicConfigReply
from shared.state import key

K = key("default", "v1")


class FakeStore:
    """The few KV calls create makes, with revisions, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[dict[str, Any], int]] = {}

    def cached(self) -> list[dict[str, Any]]:
        return [v for v, _ in self.data.values()]

    async def get(self, k: str):
        return self.data.get(k)

    async def require(self, k: str, what: str):
        return self.data[k]

    async def create(self, k: str, value: dict[str, Any], what: str = "") -> int:
        if k in self.data:
            raise Conflict(f"{what} exists")
        self.data[k] = (value, 1)
        return 1

    fail_final = False

    async def update(self, k: str, value: dict[str, Any], rev: int) -> int:
        if self.fail_final and value.get("status") == "Stopped":
            raise Internal("KV unavailable")
        self.data[k] = (value, rev + 1)
        return rev + 1

    async def delete(self, k: str) -> None:
        self.data.pop(k, None)


class FakeProfiles:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.store.data[key("default", "default")] = ({"name": "default", "config": {}, "devices": {
            "root": {"type": "disk", "path": "/", "pool": "p"},
            "eth0": {"type": "nic", "network": "br0"}}}, 1)


class FakeRemote:
    def __init__(self, calls: list[str], fail: str = "") -> None:
        self.calls, self.fail = calls, fail

    def _step(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail:
            raise Internal(f"{what} failed")

    async def resolve_image(self, project, source, kind):
        return {"fingerprint": "f" * 64, "properties": {"os": "busybox"}}

    async def volume_from_image(self, project, pool, name, fp, kind):
        self._step("volume")
        return f"/pools/{pool}/{name}"

    async def volume_delete(self, project, pool, name, kind):
        self._step("undo volume")

    async def nic_config(self, project, instance, index, device, host_name, hwaddr):
        self._step("nic")
        return NicConfigReply(name=f"eth{index}", bridge=device["network"],
                              parent=device["network"], host_name="veth00000001",
                              hwaddr="00:16:3e:00:00:01")


class FakeDriver:
    capabilities = Capabilities(instance_type="virtual-machine")  # no templates to render

    def __init__(self, calls: list[str], fail: str = "") -> None:
        self.calls, self.fail, self.specs = calls, fail, []

    def create(self, spec: InstanceSpec) -> dict[str, str]:
        self.calls.append("define")
        self.specs.append(spec)
        if self.fail == "define":
            raise Internal("define failed")
        return {}

    def purge(self, name: str) -> None:
        self.calls.append("undo define")
        if self.fail == "undo define":
            raise Internal("cannot undefine")


class FakeRouter:
    def __init__(self, drv: FakeDriver) -> None:
        self.drv = drv

    def for_type(self, kind: str) -> FakeDriver:
        return self.drv


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str, **kw: Any) -> None:
        self.warnings.append(msg)


def make(fail_remote: str = "", fail_driver: str = ""):
    calls: list[str] = []
    drv = FakeDriver(calls, fail_driver)
    ctx = Context(instances=FakeStore(), profiles=FakeProfiles(),
                  remote=FakeRemote(calls, fail_remote), drivers=FakeRouter(drv), log=Log())
    return ctx, calls, drv


BODY = {"name": "v1", "type": "virtual-machine", "source": {"alias": "busybox"}}


def run(coro):
    return asyncio.run(coro)


def test_create_reserves_then_builds_with_neutral_nics() -> None:
    ctx, calls, drv = make()
    rec, image = run(create.prepare(ctx, BODY, "default"))
    assert ctx.instances.data[K][0]["status"] == "Creating"
    final = run(create.build(ctx, rec, image))
    assert calls == ["volume", "nic", "define"]
    assert final["status"] == "Stopped" and final["volume"] == "/pools/p/v1"
    assert final["config"]["volatile.eth0.hwaddr"] == "00:16:3e:00:00:01"
    assert final["config"]["image.os"] == "busybox"
    spec = drv.specs[0]
    assert spec.volume == Path("/pools/p/v1") and isinstance(spec.nics[0], Nic)


@pytest.mark.parametrize("fail,undone", [
    ("volume", ["undo volume"]),  # the storage service may have made part of it
    ("nic", ["undo volume"]),
    ("define", ["undo define", "undo volume"]),
])
def test_failure_undoes_started_steps_in_reverse_and_drops_the_record(fail, undone) -> None:
    ctx, calls, _ = make(fail_remote=fail if fail != "define" else "",
                         fail_driver="define" if fail == "define" else "")
    rec, image = run(create.prepare(ctx, BODY, "default"))
    with pytest.raises(Internal):
        run(create.build(ctx, rec, image))
    assert calls[calls.index(fail) + 1:] == undone
    assert K not in ctx.instances.data


def test_failure_after_define_undoes_driver_then_volume() -> None:
    ctx, calls, _ = make()
    ctx.instances.fail_final = True
    rec, image = run(create.prepare(ctx, BODY, "default"))
    with pytest.raises(Internal, match="KV"):
        run(create.build(ctx, rec, image))
    assert calls == ["volume", "nic", "define", "undo define", "undo volume"]
    assert K not in ctx.instances.data


def test_a_failing_undo_step_does_not_stop_the_others() -> None:
    ctx, _, _ = make()
    run(create.prepare(ctx, BODY, "default"))
    steps: list[str] = []

    async def bad() -> None:
        steps.append("bad")
        raise Internal("boom")

    async def good() -> None:
        steps.append("good")

    retried: list[dict[str, Any]] = []
    original = create.reconcile.retry_later
    create.reconcile.retry_later = lambda _ctx, rec: retried.append(rec)
    try:
        rec = ctx.instances.data[K][0]
        run(create.undo_all(ctx, [good, bad], K, rec))
    finally:
        create.reconcile.retry_later = original
    assert steps == ["bad", "good"] and ctx.log.warnings == ["undo step failed"]
    # the record stays as the journal of what is left, and the cleanup is retried
    assert ctx.instances.data[K][0]["status"] == "Creating" and retried == [rec]


def test_undo_all_drops_the_record_when_every_step_worked() -> None:
    ctx, _, _ = make()
    run(create.prepare(ctx, BODY, "default"))

    async def good() -> None:
        pass

    run(create.undo_all(ctx, [good], K, ctx.instances.data[K][0]))
    assert K not in ctx.instances.data


def test_prepare_refuses_before_reserving() -> None:
    ctx, _, _ = make()
    for body, err in (({**BODY, "name": "1bad"}, BadRequest),
                      ({**BODY, "type": "kvm"}, BadRequest),
                      ({**BODY, "source": {}}, BadRequest),
                      ({**BODY, "config": {"limits.memory": "lots"}}, BadRequest)):
        with pytest.raises(err):
            run(create.prepare(ctx, body, "default"))
    assert ctx.instances.data == {}
    run(create.prepare(ctx, BODY, "default"))
    with pytest.raises(Conflict):
        run(create.prepare(ctx, BODY, "default"))


def test_unnamed_create_gets_a_free_random_name() -> None:
    ctx, _, _ = make()
    rec, _ = run(create.prepare(ctx, {k: v for k, v in BODY.items() if k != "name"},
                                "default"))
    adjective, noun = rec["name"].split("-")
    assert adjective.isalpha() and noun.isalpha()
    assert ctx.instances.data[key("default", rec["name"])][0]["status"] == "Creating"
