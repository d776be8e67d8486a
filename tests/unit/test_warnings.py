"""LXD's warnings without a bus: dedupe and counting, status rules, the host checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.instance import host_checks
from shared import warnings as w
from shared.errors import BadRequest, Forbidden


def test_one_warning_per_type_entity_and_node_counted():
    a = w.warning_uuid(w.STORAGE_POOL_UNAVAILABLE, "default", "/1.0/storage-pools/p", "n1")
    assert a == w.warning_uuid(w.STORAGE_POOL_UNAVAILABLE, "default",
                               "/1.0/storage-pools/p", "n1")
    assert a != w.warning_uuid(w.STORAGE_POOL_UNAVAILABLE, "default",
                               "/1.0/storage-pools/q", "n1")
    assert a != w.warning_uuid(w.STORAGE_POOL_UNAVAILABLE, "default",
                               "/1.0/storage-pools/p", "n2")
    first = w.raised(None, w.STORAGE_POOL_UNAVAILABLE, "mount failed", project="default",
                     entity_url="/1.0/storage-pools/p", node="n1", now="T1")
    assert first["uuid"] == a and first["count"] == 1 and first["status"] == "new"
    assert first["severity"] == "high" and first["first_seen_at"] == "T1"
    again = w.raised(first, w.STORAGE_POOL_UNAVAILABLE, "mount failed again",
                     project="default", entity_url="/1.0/storage-pools/p", node="n1", now="T2")
    assert again["count"] == 2 and again["first_seen_at"] == "T1"
    assert again["last_seen_at"] == "T2" and again["last_message"] == "mount failed again"


def test_acknowledged_stays_acknowledged_and_resolved_comes_back_new():
    base = w.raised(None, w.APPARMOR_NOT_AVAILABLE, "m", project="", entity_url="",
                    node="n", now="T")
    assert base["severity"] == "low"
    acked = w.raised({**base, "status": "acknowledged"}, w.APPARMOR_NOT_AVAILABLE, "m",
                     project="", entity_url="", node="n", now="T")
    assert acked["status"] == "acknowledged"
    back = w.raised({**base, "status": "resolved"}, w.APPARMOR_NOT_AVAILABLE, "m",
                    project="", entity_url="", node="n", now="T")
    assert back["status"] == "new"


def test_status_a_client_may_set():
    assert w.check_status({"status": "acknowledged"}) == "acknowledged"
    assert w.check_status({"status": "new"}) == "new"
    with pytest.raises(Forbidden):
        w.check_status({"status": "resolved"})
    for bad in ({"status": "gone"}, {}, ["new"]):
        with pytest.raises(BadRequest):
            w.check_status(bad)


def test_kvm_and_apparmor_checks(tmp_path: Path):
    assert host_checks.kvm("tcg")[w.INSTANCE_TYPE_NOT_OPERATIONAL]
    assert host_checks.kvm("kvm")[w.INSTANCE_TYPE_NOT_OPERATIONAL] is None
    assert host_checks.kvm(None)[w.INSTANCE_TYPE_NOT_OPERATIONAL] is None
    assert "AppArmor" in host_checks.apparmor(tmp_path)[w.APPARMOR_NOT_AVAILABLE]
    flag = tmp_path / "sys/module/apparmor/parameters/enabled"
    flag.parent.mkdir(parents=True)
    flag.write_text("Y\n")
    assert host_checks.apparmor(tmp_path)[w.APPARMOR_NOT_AVAILABLE] is None


def test_cgroup_v1_limits_that_cannot_apply(tmp_path: Path):
    v1 = {c: tmp_path / c for c in host_checks.V1_CONTROLLERS if c != "pids"}
    for d in v1.values():
        d.mkdir()
    out = host_checks.cgroups(v1, None)
    assert "limits.processes" in out[w.MISSING_CGROUP["pids"]]
    assert out[w.MISSING_CGROUP["memory"]] is None
    assert "limits.disk.priority" in out[w.MISSING_CGROUP["blkio.weight"]]
    assert "limits.memory.swap" in out[w.MISSING_CGROUP["memory.memsw"]]
    (v1["blkio"] / "blkio.bfq.weight").touch()
    (v1["memory"] / "memory.memsw.limit_in_bytes").touch()
    out = host_checks.cgroups(v1, None)
    assert out[w.MISSING_CGROUP["blkio.weight"]] is None
    assert out[w.MISSING_CGROUP["memory.memsw"]] is None


def test_pure_cgroup_v2_host(tmp_path: Path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    out = host_checks.cgroups({}, tmp_path)
    assert not any(out.values()), out
    (tmp_path / "cgroup.controllers").write_text("cpu io memory\n")
    out = host_checks.cgroups({}, tmp_path)
    assert out[w.MISSING_CGROUP["pids"]] and out[w.MISSING_CGROUP["cpuset"]]
