"""Which volumes the storage service's orphan sweep may remove (pure logic)."""

from __future__ import annotations

from services.storage.orphans import candidates


def used_by(vol):
    return [f"/1.0/instances/{vol['name']}"]


def vol(name: str, kind: str = "container", created_at: str = "2020-01-01T00:00:00Z",
        **extra):
    return {"name": name, "kind": kind, "pool": "p", "created_at": created_at, **extra}


def test_only_old_instance_volumes_without_an_instance() -> None:
    now = 1_700_000_000.0  # 2023: every created_at below is older, unless said otherwise
    vols = [vol("orphan"), vol("owned"), vol("img", kind="image"),
            vol("making", creating=True), vol("young", created_at="2099-01-01T00:00:00Z"),
            vol("custom", kind="custom"), vol("vm", kind="virtual-machine"),
            vol("bad", created_at="")]
    got = candidates(vols, {"/1.0/instances/owned"}, used_by, 600.0, now)
    assert [v["name"] for v in got] == ["orphan", "vm"]
