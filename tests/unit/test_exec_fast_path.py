"""The pure parts of exec's fast path: the attach helper's kept liblxc handles and the
gateway's kept websocket secrets."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.gateway.routes import streams as gw_streams
from services.instance.drivers import lxc_attach_helper as helper


class FakeContainer:
    made: list[tuple[str, str]] = []

    def __init__(self, name: str, lxcpath: str) -> None:
        FakeContainer.made.append((name, lxcpath))
        self.name = name


@pytest.fixture
def handles(monkeypatch: pytest.MonkeyPatch) -> helper.Handles:
    FakeContainer.made = []
    monkeypatch.setattr(helper.lxc, "Container", FakeContainer)
    return helper.Handles()


def test_a_handle_is_kept_until_the_config_changes(tmp_path: Path,
                                                   handles: helper.Handles) -> None:
    conf = tmp_path / "c1" / "config"
    conf.parent.mkdir()
    conf.write_text("lxc.uts.name = c1\n")
    first = handles.get("c1", str(tmp_path))
    assert handles.get("c1", str(tmp_path)) is first  # no second config parse
    assert FakeContainer.made == [("c1", str(tmp_path))]
    conf.write_text("lxc.uts.name = c1\nlxc.environment = A=1\n")  # size and mtime change
    second = handles.get("c1", str(tmp_path))
    assert second is not first
    new = tmp_path / "c1" / "config.new"  # same size, a new file (a rewrite by rename)
    new.write_text(conf.read_text())
    os.utime(new, ns=(conf.stat().st_atime_ns, conf.stat().st_mtime_ns))
    new.replace(conf)
    assert handles.get("c1", str(tmp_path)) is not second
    handles.forget("c1", str(tmp_path))  # a failed attach starts afresh
    assert len({id(handles.get("c1", str(tmp_path))) for _ in range(3)}) == 1
    assert len(FakeContainer.made) == 4


def test_no_handle_is_kept_for_a_container_without_config(tmp_path: Path,
                                                          handles: helper.Handles) -> None:
    handles.get("gone", str(tmp_path))
    handles.get("gone", str(tmp_path))
    assert len(FakeContainer.made) == 2  # liblxc is asked each time (and says undefined)


def test_the_oldest_handles_go_past_the_limit(tmp_path: Path, handles: helper.Handles,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper.Handles, "LIMIT", 2)
    for n in ("a", "b", "c"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "config").write_text(n)
        handles.get(n, str(tmp_path))
    handles.get("a", str(tmp_path))  # "a" went when "c" came: built again
    assert [m[0] for m in FakeContainer.made] == ["a", "b", "c", "a"]
    handles.get("c", str(tmp_path))  # still kept
    assert len(FakeContainer.made) == 4


def _event(op: dict[str, Any]) -> Any:
    return SimpleNamespace(data=json.dumps({"type": "operation", "metadata": op}).encode())


def test_kept_secrets_serve_websockets_until_the_final_event() -> None:
    """The 202's fds are found at once; the final event forgets them and hands the final
    operation to the reader of the exit code."""
    finals: list[dict[str, Any]] = []
    secrets = gw_streams.Secrets()
    secrets._ops = SimpleNamespace(remember_final=finals.append)
    fds = {"0": "s0", "1": "s1", "2": "s2", "control": "sc"}
    secrets.keep("op1", fds)
    assert secrets.get("op1") == fds
    op = {"id": "op1", "status": "Success", "metadata": {"fds": fds, "return": 0}}
    asyncio.run(secrets._on_event(_event(op)))
    assert secrets.get("op1") is None
    assert finals == [op]


def test_keep_fds_ignores_what_is_not_a_websocket_operation() -> None:
    kept: list[Any] = []

    class Gw:
        bus = None

    async def watch(_gw: Any) -> None:
        kept.append("watch")

    saved = gw_streams._secrets
    gw_streams._secrets = SimpleNamespace(watch=watch, keep=lambda *a: kept.append(a))
    try:
        for op in (None, {"id": "x", "metadata": None}, {"id": "x", "metadata": {"fds": 1}},
                   {"id": "", "metadata": {"fds": {"0": "s"}}}):
            asyncio.run(gw_streams.keep_fds(Gw(), op))
        assert kept == []
        asyncio.run(gw_streams.keep_fds(Gw(), {"id": "op2", "metadata": {"fds": {"0": "s"}}}))
        assert kept == ["watch", ("op2", {"0": "s"}, None)]  # not Running: fds only
        running = {"id": "op3", "status": "Running", "metadata": {"fds": {"0": "s"}}}
        asyncio.run(gw_streams.keep_fds(Gw(), running))
        assert kept[-1] == ("op3", {"0": "s"}, running)
    finally:
        gw_streams._secrets = saved


def test_a_started_operation_is_read_from_its_202_until_its_final_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``lxc exec`` reads its operation once the websockets are up: the 202's copy
    answers while no final event came; the final event (or the TTL) ends that."""
    finals: list[dict[str, Any]] = []
    secrets = gw_streams.Secrets()
    secrets._ops = SimpleNamespace(remember_final=finals.append)
    fds = {"0": "s0", "control": "sc"}
    running = {"id": "op3", "status": "Running", "metadata": {"fds": fds}}
    secrets.keep("op3", fds, running)
    got = secrets.started("op3")
    assert got == running and got is not running  # a copy: the caller may change it
    asyncio.run(secrets._on_event(_event({**running, "status": "Success",
                                          "metadata": {"fds": fds, "return": 0}})))
    assert secrets.started("op3") is None  # the final operation is read (remember_final)
    assert finals and finals[0]["metadata"]["return"] == 0
    secrets.keep("op4", fds, {**running, "id": "op4"})
    now = gw_streams.time.monotonic()
    monkeypatch.setattr(gw_streams.time, "monotonic", lambda: now + secrets.STARTED_TTL + 1)
    assert secrets.started("op4") is None  # too old: the record is read
    secrets.keep("op5", fds)  # no operation given (not Running): nothing to answer from
    assert secrets.started("op5") is None
