"""A cold move between cluster members imports the target's staging directory in place
(shared/backup/staged.py, storage/backups.py ``_adopt``): on a dir pool the received
trees are renamed into the pool, so what rsync wrote stays as written, extended
attributes included (a tarball made by Python's tarfile dropped them), and the staging
directory is gone afterwards. Two nodes on one nats-server (tests/cluster_stack.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .cluster_stack import two_node_fixtures
from .world import lxc

pytestmark = pytest.mark.timeout(600)


cluster, world = two_node_fixtures()


def volume(node, name: str) -> Path:
    """The container's volume in the node's dir pool (found on disk, as an admin would)."""
    found = [p for p in node.stack.dir.glob(f"**/containers/{name}") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def location(node, name: str) -> str:
    rows = json.loads(lxc(node.stack, "list", name, "--format", "json").stdout)
    return [r for r in rows if r["name"] == name][0]["location"]


def test_move_keeps_xattrs_and_snapshots(cluster, world):
    (n1, n2), _ = cluster
    c = world.name("xa")
    lxc(n1.stack, "init", world.image, c, "-p", world.profile, "--target", "node1")
    lxc(n1.stack, "snapshot", c, "s0")
    mark = volume(n1, c) / "rootfs" / "root" / "mark"
    mark.write_text("moved\n")
    os.setxattr(mark, "user.corral.mark", b"kept")
    out = lxc(n1.stack, "move", c, "--target", "node2")
    assert out.returncode == 0, out.stderr
    assert location(n1, c) == "node2"
    moved = volume(n2, c) / "rootfs" / "root" / "mark"
    assert moved.read_text() == "moved\n"
    assert os.getxattr(moved, "user.corral.mark") == b"kept"  # lost by a tarball
    top = volume(n2, c)
    assert (top.stat().st_mode & 0o777, top.stat().st_uid) == (0o711, 0)  # the pool's
    assert not (top / "backup.yaml").exists()
    snap = [p for p in n2.stack.dir.glob(f"**/containers-snapshots/{c}/s0") if p.is_dir()]
    assert len(snap) == 1 and (snap[0] / "rootfs" / "bin").exists()
    staging = n2.stack.dir / "migration"  # nothing left behind by the import
    assert not staging.exists() or not any(staging.iterdir())
    lxc(n1.stack, "move", c, "--target", "node1")  # and back
    assert os.getxattr(volume(n1, c) / "rootfs" / "root" / "mark", "user.corral.mark") \
        == b"kept"
    assert not list(n2.stack.dir.glob(f"**/containers/{c}"))
    lxc(n1.stack, "delete", c, "--force")

