"""Exec and delete ask liblxc for nothing it already knows: the kept reader, the cached init pid.

Why: a new ``lxc.Container`` parses the config with the GIL held (~0.33 ms quiet, ~5 ms
under load) and its ``state`` is one more round trip to the monitor, right after the
caller's status check asked it. The cache must still notice a stop and a new boot.
"""

from __future__ import annotations

import pytest

lxc = pytest.importorskip("lxc")

from services.instance.drivers import lxc as lxc_driver  # noqa: E402
from shared.errors import Conflict, NotFound  # noqa: E402
from tests.test_lxc_driver import env, run  # noqa: E402,F401  (env is a fixture)

pytestmark = pytest.mark.root


def _count_handles(monkeypatch) -> list[str]:
    built: list[str] = []
    real = lxc_driver.lxc.Container

    def counting(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(lxc_driver.lxc, "Container", counting)
    return built


def test_exec_builds_no_container_handle_once_the_reader_is_kept(env, monkeypatch):  # noqa: F811 (the imported fixture)
    drv, new, _ = env
    name, _ = new()
    assert run(drv, name, ["true"])[0] == 0
    built = _count_handles(monkeypatch)
    for i in range(3):
        assert run(drv, name, ["sh", "-c", f"echo {i}"])[:2] == (0, f"{i}\n".encode())
    assert built == []


def test_exec_after_a_stop_and_a_new_boot(env):  # noqa: F811 (the imported fixture)
    drv, new, _ = env
    name, _ = new()
    assert run(drv, name, ["true"])[0] == 0
    drv.stop(name, 0, True)
    with pytest.raises(Conflict, match="not running"):
        drv.exec_start(name, ["true"])
    drv.start(name)  # a new init: the cached pid's start time no longer matches
    code, out, _ = run(drv, name, ["sh", "-c", "echo $$"])
    assert code == 0 and out.strip().isdigit()


def test_exec_in_no_such_instance_is_not_found(env):  # noqa: F811 (the imported fixture)
    drv, _, _ = env
    with pytest.raises(NotFound):
        drv.exec_start("crtnosuch", ["true"])


def test_delete_after_the_status_check_builds_no_handle_and_still_refuses_a_running_one(
        env, monkeypatch):  # noqa: F811 (the imported fixture)
    drv, new, _ = env
    name, _ = new()
    assert drv.host_status(name) == "Running"
    with pytest.raises(Conflict, match="stop it first"):
        drv.delete(name)  # the kept reader answers from the monitor, not a stale state
    drv.stop(name, 0, True)
    assert drv.host_status(name) == "Stopped"  # what the service asks before a delete
    built = _count_handles(monkeypatch)
    drv.delete(name)
    assert built == []
    assert not (drv.lxcpath / name).exists()
    with pytest.raises(NotFound):
        drv.delete(name)


def test_a_forced_stop_removes_its_own_cgroups_without_sweeping_every_hierarchy(
        env, monkeypatch):  # noqa: F811 (the imported fixture)
    drv, new, _ = env
    name, _ = new()
    assert run(drv, name, ["true"])[0] == 0
    c = lxc.Container(name, str(drv.lxcpath))
    pid = c.init_pid
    mine = lxc_driver._lxc_cgroups(name, pid, lxc_driver._parent_pid(pid))
    assert mine and any(f"lxc.payload.{name}" in str(d) for d in mine)
    assert any(f"lxc.monitor.{name}" in str(d) for d in mine)
    assert all(d.is_dir() for d in mine)
    swept: list[str] = []
    monkeypatch.setattr(lxc_driver.cgroups, "remove_leftovers",
                        lambda n, wait=0.0: swept.append(n))
    built = _count_handles(monkeypatch)
    drv.stop(name, 0, True)
    assert drv.host_status(name) == "Stopped"
    assert not any(d.exists() for d in mine)  # no leftover for the next start's -N
    assert swept == [] and built == []
    with pytest.raises(Conflict, match="already stopped"):
        drv.stop(name, 0, True)
    drv.start(name)  # starts again, a fresh cgroup of the same name
    assert run(drv, name, ["true"])[0] == 0
    drv.freeze(name)
    drv.stop(name, 0, True)  # a frozen one is thawed, then killed
    assert drv.host_status(name) == "Stopped"
