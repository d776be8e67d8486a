"""Unshifting a tree received from LXD (services/migration/idmap.py): owners and groups
in the map's host range come back to the container's range; others stay; setuid stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.migration import idmap

MAP = [{"isuid": True, "isgid": False, "hostid": 1000000, "nsid": 0, "maprange": 65536},
       {"isuid": False, "isgid": True, "hostid": 1000000, "nsid": 0, "maprange": 65536}]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_unshift_brings_ids_back(tmp_path: Path):
    root = tmp_path / "container"
    (root / "rootfs" / "bin").mkdir(parents=True)
    tool = root / "rootfs" / "bin" / "tool"
    tool.write_text("x")
    os.symlink("tool", root / "rootfs" / "bin" / "link")
    for p in (root, root / "rootfs", root / "rootfs" / "bin", tool):
        os.lchown(p, 1000000, 1000000)
    os.lchown(root / "rootfs" / "bin" / "link", 1000033, 1000044)
    os.chmod(tool, 0o4755)
    outside = root / "rootfs" / "host-owned"
    outside.write_text("y")
    os.chown(outside, 7, 8)
    assert idmap.unshift(root, MAP) == 5
    assert (tool.stat().st_uid, tool.stat().st_gid) == (0, 0)
    assert tool.stat().st_mode & 0o7777 == 0o4755
    link = os.lstat(root / "rootfs" / "bin" / "link")
    assert (link.st_uid, link.st_gid) == (33, 44)
    assert (outside.stat().st_uid, outside.stat().st_gid) == (7, 8)
    assert idmap.unshift(root, []) == 0
