"""Pure logic of LXD's backup format: index.yaml checks, where tar members go, the
streaming tar writer and reader (in memory), backup names and expiry, dropped keys."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from services.instance.backup_import import clean_config
from services.instance.backups import expired, next_name, parse_time, prepare
from shared.backup import layout, reader
from shared.backup.writer import TarStream
from shared.errors import BadRequest, Conflict

REF = Path("/work/shared/reference/lxd-5.0/exports/lxd-export-refc.tar.gz")


def test_parse_index_checks_what_an_import_needs():
    info = layout.parse_index(b"name: c1\nsnapshots: [s0]\nconfig: {}\n")
    assert info["type"] == "container" and info["snapshots"] == ["s0"]
    assert info["optimized"] is False
    for bad in (b"[1, 2]", b"name: 5", b"name: c\nsnapshots: [../x]",
                b"name: c\ntype: floppy", b"{{{"):
        with pytest.raises(BadRequest):
            layout.parse_index(bad)


def test_member_targets():
    t = layout.member_target
    assert t("backup/index.yaml", "container", []) is None
    assert t("backup", "container", []) is None
    assert t("backup/container/rootfs/etc/passwd", "container", []) == \
        ("volume", "rootfs/etc/passwd")
    assert t("backup/container", "container", []) == ("volume", "")
    assert t("backup/snapshots/s0/rootfs", "container", ["s0"]) == ("snapshot:s0", "rootfs")
    assert t("backup/snapshots/s0.bin", "container", ["s0"]) == ("bin", "s0")
    assert t("backup/container.bin", "container", []) == ("bin", "")
    assert t("backup/volume/x", "custom", []) == ("volume", "x")
    assert t("backup/volume-snapshots/s0/x", "custom", ["s0"]) == ("snapshot:s0", "x")
    assert t("backup/virtual-machine-snapshots/s0.bin", "virtual-machine", ["s0"]) == \
        ("bin", "s0")
    for bad in ("backup/container/../../etc/passwd", "/etc/passwd", "other/x",
                "backup/snapshots/zz/rootfs", "backup/what"):
        with pytest.raises(BadRequest):
            t(bad, "container", ["s0"])


def test_backup_names_and_expiry():
    assert next_name([]) == "backup0"
    assert next_name(["backup0", "backup7", "other", "backupx"]) == "backup8"
    assert parse_time("2026-11-30T17:10:00.123456789+01:00").utcoffset().seconds == 3600
    past = {"expires_at": "2020-01-01T00:00:00Z"}
    assert expired(past) and not expired({"expires_at": "0001-01-01T00:00:00Z"})
    assert not expired({"expires_at": "2999-01-01T00:00:00.5Z"},
                       datetime(2026, 1, 1, tzinfo=timezone.utc))


class _Store:
    def __init__(self, recs):
        self.recs = recs

    def cached(self):
        return self.recs


def test_prepare_refuses_bad_requests():
    inst = {"project": "default", "name": "c1", "pool": "p", "type": "container"}
    store = _Store([{"project": "default", "instance": "c1", "name": "backup0",
                     "created_at": "x"}])
    rec = prepare(store, inst, {"compression_algorithm": "zstd", "instance_only": True})
    assert rec["name"] == "backup1" and rec["instance_only"] and rec["creating"]
    with pytest.raises(Conflict):
        prepare(store, inst, {"name": "backup0"})
    for body in ({"name": "a/b"}, {"compression_algorithm": "lz77"},
                 {"optimized_storage": "yes"}, {"expires_at": "tomorrow"}):
        with pytest.raises(BadRequest):
            prepare(store, inst, body)


def test_lxd_host_keys_are_dropped():
    cfg = clean_config({"limits.memory": "128MiB", "volatile.idmap.next": "[]",
                        "volatile.last_state.power": "RUNNING",
                        "volatile.eth0.host_name": "veth1", "volatile.eth0.hwaddr": "m",
                        "volatile.uuid": "u"})
    assert cfg == {"limits.memory": "128MiB", "volatile.eth0.hwaddr": "m",
                   "volatile.uuid": "u"}


@pytest.mark.parametrize("algo", ["none", "gzip", "xz", "bzip2", "zstd"])
def test_writer_and_reader_round_trip(tmp_path, algo):
    """A tree written by TarStream reads back through reader.open_tar (zstd included),
    index first, with hard links, symlinks and ids (unshifted by the mapper)."""
    src = tmp_path / "vol"
    (src / "rootfs/etc").mkdir(parents=True)
    (src / "rootfs/etc/passwd").write_text("root:x:0:0\n")
    os.link(src / "rootfs/etc/passwd", src / "rootfs/etc/hard")
    (src / "rootfs/bin").symlink_to("/usr/bin")
    (src / "backup.yaml").write_text("old")
    out: list[bytes] = []
    tar = TarStream(out.append, algo)
    tar.add_bytes(layout.INDEX, b"name: c1\n")
    tar.add_tree(src, "backup/container", lambda u, g: (u + 1, g + 2),
                 skip=frozenset({"backup.yaml"}))
    tar.close()
    t = reader.open_tar(io.BytesIO(b"".join(out)))  # type: ignore[arg-type]
    assert reader.read_index(t) == b"name: c1\n"
    rest = {m.name: m for m in t}
    assert "backup/container/backup.yaml" not in rest
    assert rest["backup/container/rootfs/etc/passwd"].uid == os.getuid() + 1
    assert rest["backup/container/rootfs/bin"].issym()
    hard = [m for m in rest.values() if m.islnk()]
    assert len(hard) == 1


def test_reference_index_reads_first():
    with open(REF, "rb") as f:
        t = reader.open_tar(io.BufferedReader(f))  # type: ignore[arg-type]
        info = layout.parse_index(reader.read_index(t))
    assert info["name"] == "refc" and info["snapshots"] == ["snap0"]
    assert info["config"]["container"]["config"]["limits.memory"] == "128MiB"
    with tarfile.open(REF) as t2:
        assert t2.getnames()[0] == layout.INDEX
    assert yaml.safe_load(layout.dump({"a": [1]})) == {"a": [1]}
