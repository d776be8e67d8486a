"""``lxc storage set <btrfs pool> btrfs.mount_options=...``: the mount ends with exactly the
new options. A plain ``mount -o remount,<new>`` kept what was dropped (btrfs starts from
the options it has: ``autodefrag`` stayed; libmount's remount kept ``noatime``).

A real btrfs loop pool of the session's stack, through the stock ``lxc``; the options are
read from /proc/self/mountinfo (the services share the test's mount namespace).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from .test_storage_service import SMALL, lxc, pool_path, pools  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs btrfs-progs"),
    pytest.mark.skipif(shutil.which("lxc") is None, reason="Debian lxd-client is missing"),
]


def mount_options(path: Path) -> tuple[set[str], set[str]]:
    """The mount's own (VFS) options and the filesystem's, as the kernel shows them."""
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        rows = [line.split() for line in fh]
    row = next(r for r in rows if r[4] == str(path))
    sep = row.index("-")
    return set(row[5].split(",")), set(row[sep + 3].split(","))


def test_remount_has_exactly_the_new_options(stack, pools, uid, tmp_path):  # noqa: F811
    pools.append(uid)
    path = pool_path(stack, uid)
    r = lxc(stack, tmp_path, "storage", "create", uid, "btrfs", f"size={SMALL}",
            "btrfs.mount_options=user_subvol_rm_allowed,autodefrag,noatime,nodev,"
            "compress=lzo")
    assert r.returncode == 0, r.stderr
    vfs, fs = mount_options(path)
    assert {"noatime", "nodev"} <= vfs and {"autodefrag", "compress=lzo"} <= fs, (vfs, fs)

    def set_options(opts: str) -> tuple[set[str], set[str]]:
        r = lxc(stack, tmp_path, "storage", "set", uid, f"btrfs.mount_options={opts}")
        assert r.returncode == 0, r.stderr
        return mount_options(path)

    # dropped: autodefrag (btrfs kept it), noatime and nodev (the remount kept them)
    vfs, fs = set_options("user_subvol_rm_allowed,compress=zstd")
    assert "relatime" in vfs and not {"noatime", "nodev"} & vfs, vfs
    assert "autodefrag" not in fs and "compress=lzo" not in fs, fs
    assert any(o.startswith("compress=zstd") for o in fs) and "user_subvol_rm_allowed" in fs

    vfs, fs = set_options("user_subvol_rm_allowed,nodatacow,nosuid")
    assert "nosuid" in vfs and not any(o.startswith("compress") for o in fs), (vfs, fs)
    assert {"nodatacow", "nodatasum"} <= fs, fs  # nodatacow brings nodatasum

    vfs, fs = set_options("user_subvol_rm_allowed")
    assert "nosuid" not in vfs and not {"nodatacow", "nodatasum"} & fs, (vfs, fs)

    # an option btrfs cannot turn off while mounted: 400, the pool as it was
    r = lxc(stack, tmp_path, "storage", "set", uid, "btrfs.mount_options=compress=zstd")
    assert r.returncode != 0, r.stdout
    assert "cannot turn off" in r.stderr and "user_subvol_rm_allowed" in r.stderr, r.stderr
    assert mount_options(path) == (vfs, fs)
    shown = yaml.safe_load(lxc(stack, tmp_path, "storage", "show", uid).stdout)
    assert shown["config"]["btrfs.mount_options"] == "user_subvol_rm_allowed"
