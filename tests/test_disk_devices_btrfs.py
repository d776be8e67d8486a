"""Disk devices on a btrfs pool: a custom volume (a subvolume on the pool's loop device)
attached to a running container, written by its root, throttled live. Its own module: a
world per module (the image is imported once per world)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .test_disk_devices import _blkio, _mounted, _sh
from .world import lxc, make_world

pytestmark = pytest.mark.root



@pytest.fixture(scope="module")
def bworld(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        w.custom = []
        try:
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            for vol in w.custom:
                lxc(stack, "storage", "volume", "delete", w.pool, vol, check=False)


def test_btrfs_custom_volume_attached_and_throttled(bworld, stack, api):
    name = bworld.create("b", start=True)
    vol = f"{bworld.prefix}bv"
    bworld.custom.append(vol)
    lxc(stack, "storage", "volume", "create", bworld.pool, vol)
    lxc(stack, "storage", "volume", "attach", bworld.pool, vol, name, "/srv/data")
    _sh(stack, name, "echo b > /srv/data/f && chown 7:7 /srv/data/f")
    path = stack.dir / "storage-pools" / bworld.pool / "custom" / vol
    st = os.stat(path / "f")
    assert (st.st_uid, st.st_gid) == (7, 7)
    # The volume lives on the pool's loop device: that is the device throttled.
    source = next(line.split()[0] for line in Path("/proc/self/mounts").read_text()
                  .splitlines() if line.split()[1] == str(path.parents[1]))
    rdev = os.stat(source).st_rdev
    dev = f"{os.major(rdev)}:{os.minor(rdev)}"
    lxc(stack, "config", "device", "set", name, vol, "limits.write=4MB")
    assert f"{dev} 4000000" in _blkio(bworld, name, "blkio.throttle.write_bps_device")
    assert _sh(stack, name, "cat /srv/data/f").stdout == "b\n"  # still mounted
    lxc(stack, "storage", "volume", "detach", bworld.pool, vol, name)
    assert not _mounted(stack, name, "/srv/data")
