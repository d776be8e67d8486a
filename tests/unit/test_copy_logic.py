"""Pure logic of copies and publishing: source names, what config a copy takes, LXD's
snapshot comparison for --refresh, a copied snapshot's pool, publish requests."""

from __future__ import annotations

import pytest

from services.image.publish import check
from services.instance.copy import (
    compare_snapshots,
    copied_config,
    snapshot_record,
    split_source,
)
from shared.errors import BadRequest


def test_split_source() -> None:
    assert split_source("c1") == ("c1", None)
    assert split_source("c1/snap0") == ("c1", "snap0")
    for bad in ("", None, 3, "c1/", "/s0", "a/b/c"):
        with pytest.raises(BadRequest):
            split_source(bad)


def test_copied_config_drops_volatile_but_base_image() -> None:
    src = {"limits.memory": "64MiB", "volatile.base_image": "abc",
           "volatile.eth0.hwaddr": "00:16:3e:00:00:01", "volatile.uuid": "u",
           "volatile.eth0.host_name": "veth1", "volatile.last_state.power": "RUNNING",
           "volatile.idmap.next": "[]", "user.x": "1"}
    got = copied_config(src, {"user.x": "2", "volatile.eth0.hwaddr": "forced"})
    assert got == {"limits.memory": "64MiB", "volatile.base_image": "abc", "user.x": "2"}


def _snap(name: str, created: str) -> dict:
    return {"name": name, "created_at": created}


def test_compare_snapshots_like_lxd() -> None:
    src = [_snap("s0", "t0"), _snap("s1", "t1"), _snap("s2", "t2")]
    tgt = [_snap("s0", "t0"), _snap("s1", "other"), _snap("gone", "t9")]
    send, drop = compare_snapshots(src, tgt)
    assert [s["name"] for s in send] == ["s1", "s2"]
    assert [s["name"] for s in drop] == ["s1", "gone"]
    assert compare_snapshots(src, src) == ([], [])


def test_a_copied_snapshot_names_the_target_pool() -> None:
    target = {"project": "p", "name": "b", "pool": "new",
              "expanded_devices": {"root": {"type": "disk", "path": "/", "pool": "new"}}}
    from_profile = {"name": "s0", "project": "default", "instance": "a", "pool": "old",
                    "devices": {}, "created_at": "t",
                    "expanded_devices": {"root": {"type": "disk", "path": "/", "pool": "old"}}}
    got = snapshot_record(from_profile, target)
    assert got["devices"] == {"root": {"type": "disk", "path": "/", "pool": "new"}}
    assert got["expanded_devices"]["root"]["pool"] == "new"
    assert (got["project"], got["instance"], got["pool"], got["created_at"]) == \
        ("p", "b", "new", "t")
    local = {**from_profile, "devices": {"rd": {"type": "disk", "path": "/", "pool": "old",
                                                "size": "1GiB"}},
             "expanded_devices": {"rd": {"type": "disk", "path": "/", "pool": "old",
                                         "size": "1GiB"}}}
    assert snapshot_record(local, target)["devices"]["rd"] == {
        "type": "disk", "path": "/", "pool": "new", "size": "1GiB"}
    same = {**from_profile, "expanded_devices": {
        "root": {"type": "disk", "path": "/", "pool": "new"}}}
    assert snapshot_record(same, target)["devices"] == {}  # nothing to pin


def test_publish_requests() -> None:
    pub = check({"source": {"type": "instance", "name": "c1"}, "properties": {"os": "x"},
                 "aliases": [{"name": "a"}], "compression_algorithm": "zstd"})
    assert (pub.name, pub.snapshot, pub.compression, pub.properties) == \
        ("c1", None, "zstd", {"os": "x"})
    assert check({"source": {"type": "snapshot", "name": "c1/s0"}}).snapshot == "s0"
    assert check({"source": {"type": "container", "name": "c1"}}).compression == "gzip"
    assert check({"source": {"type": "instance", "name": "c1"}}).properties is None
    for bad in ({"source": {"type": "instance"}},
                {"source": {"type": "snapshot", "name": "c1"}},
                {"source": {"type": "instance", "name": "c1/s0"}},
                {"source": {"type": "nope", "name": "c1"}},
                {"source": {"type": "instance", "name": "c1"}, "compression_algorithm": "lz4"},
                {"source": {"type": "instance", "name": "c1"}, "aliases": ["x"]},
                {"source": {"type": "instance", "name": "c1"}, "public": "yes"},
                {"source": {"type": "instance", "name": "c1"}, "expires_at": "soon"}):
        with pytest.raises(BadRequest):
            check(bad)
