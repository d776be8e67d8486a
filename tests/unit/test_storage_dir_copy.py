"""The dir driver's copy: a file that vanished mid-copy (a running instance) is no failure,
any other cp error is. ``cp`` is replaced on PATH by a script that copies, then
reports the error under test, so the outcome does not depend on timing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.storage.drivers.dir import DirDriver
from services.storage.drivers.util import _vanished
from shared.errors import Internal


def fake_cp(tmp_path: Path, error: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "cp"
    script.write_text(f'#!/bin/sh\n/bin/cp "$@" || exit $?\necho "{error}" >&2\nexit 1\n')
    script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "run").mkdir(parents=True)
    (src / "data").write_text("x")
    return src


def test_a_vanished_file_is_not_a_failure(tmp_path, monkeypatch):
    for k, v in fake_cp(tmp_path, "cp: cannot stat 'src/run/gone.pid': No such file or "
                                  "directory").items():
        monkeypatch.setenv(k, v)
    drv = DirDriver("p", {}, tmp_path / "corral")
    drv._vol_copy(source(tmp_path), tmp_path / "dst", readonly=True)
    assert (tmp_path / "dst" / "data").read_text() == "x"


def test_other_cp_errors_fail(tmp_path, monkeypatch):
    for k, v in fake_cp(tmp_path, "cp: error writing 'dst/data': No space left on "
                                  "device").items():
        monkeypatch.setenv(k, v)
    drv = DirDriver("p", {}, tmp_path / "corral")
    with pytest.raises(Internal, match="No space left"):
        drv._vol_copy(source(tmp_path), tmp_path / "dst")


def test_a_missing_source_fails(tmp_path):
    drv = DirDriver("p", {}, tmp_path / "corral")
    with pytest.raises(Internal, match="No such file"):
        drv._vol_copy(tmp_path / "missing", tmp_path / "dst")


def test_vanished_lines():
    assert _vanished("cp: cannot stat 'a/b': No such file or directory")
    assert not _vanished("cp: cannot create regular file 'x': Permission denied")
