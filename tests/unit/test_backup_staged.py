"""shared/backup/staged.py: a migration's staging directory read as a backup tarball."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from shared.backup import layout, reader, staged
from shared.errors import BadRequest


def make_stage(root: Path) -> Path:
    stage = root / staged.STAGING / "op1"
    base = stage / layout.PREFIX
    (base / "snapshots" / "s0").mkdir(parents=True)
    (base / "snapshots" / "s0" / "a").write_text("old")
    (base / "container" / "etc").mkdir(parents=True)
    (base / "container" / "etc" / "a").write_text("new")
    (stage / layout.INDEX).write_text("name: c\n")
    return stage


def test_stream_is_lxd_order(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    with staged.stream(stage, "container", ["s0"]) as raw:
        tar = reader.open_tar(raw)
        names = [m.name for m in tar]
    assert names[0] == layout.INDEX  # the index first: the importer reads it first
    assert names.index("backup/snapshots/s0") < names.index("backup/container")
    assert "backup/container/etc/a" in names


def test_stream_left_early_ends_writer(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    big = stage / layout.PREFIX / "container" / "big"
    big.write_bytes(b"x" * (4 << 20))  # more than a pipe holds: the writer blocks
    with staged.stream(stage, "container", ["s0"]) as raw:
        raw.read(10)  # the reader refuses the rest: leaving must not hang


def test_checked_only_staging_dirs(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    assert staged.checked(tmp_path, str(stage)) == stage.resolve()
    for bad in ("/etc", str(tmp_path / staged.STAGING / ".." / "x"),
                str(tmp_path / staged.STAGING)):
        with pytest.raises(BadRequest):
            staged.checked(tmp_path, bad)
    (stage / layout.INDEX).unlink()
    with pytest.raises(BadRequest):  # not (yet) a whole staged backup
        staged.checked(tmp_path, str(stage))


def test_write_tar_file(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    out = tmp_path / "t.tar"
    with out.open("wb") as f:
        staged.write_tar(stage, f, "container", ["s0"])
    with tarfile.open(out) as tar:
        assert tar.extractfile("backup/container/etc/a").read() == b"new"  # type: ignore


def test_xattrs_carried(tmp_path: Path) -> None:
    """A received file's xattrs reach the tarball (tarfile writes none by itself)."""
    stage = make_stage(tmp_path)
    f = stage / layout.PREFIX / "container" / "etc" / "a"
    os.setxattr(f, "user.corral", b"kept")
    with staged.stream(stage, "container", ["s0"]) as raw:
        got = {m.name: m.pax_headers for m in reader.open_tar(raw)}
    assert got["backup/container/etc/a"].get("SCHILY.xattr.user.corral") == "kept"
