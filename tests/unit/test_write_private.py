"""write_private: atomic 0600 replacement, and no rewrite of what a file holds already
(a start rewrites an unchanged spec and LXC config; on ext4 each rename over a file
flushes it)."""

from __future__ import annotations

import os

from services.instance.drivers.base import write_private


def test_same_text_is_not_rewritten_other_text_is(tmp_path):
    f = tmp_path / "config"
    write_private(f, "a = 1\n")
    first = os.stat(f)
    assert f.read_text() == "a = 1\n" and first.st_mode & 0o777 == 0o600
    write_private(f, "a = 1\n")
    assert os.stat(f).st_ino == first.st_ino  # left alone: no temporary file, no rename
    write_private(f, "a = 1\nb = 2\n")
    assert f.read_text() == "a = 1\nb = 2\n" and os.stat(f).st_ino != first.st_ino
    write_private(f, "a = 1\n")  # a prefix of what is there is different text
    assert f.read_text() == "a = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]
