"""Storage drivers against real kernel objects: btrfs on loop files, bind mounts, cp -a.

Every pool, loop file and mount lives under a fresh temp dir named ``crt<5 hex>-...``;
the fixture's finalizer unmounts everything below it, detaches its loop devices and
removes it, also when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from services.storage.drivers import load_driver
from services.storage.drivers.btrfs_util import referenced_limit
from services.storage.drivers.util import is_mounted, loop_devices_for
from shared.errors import CorralError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs btrfs-progs"),
]


def _mounts_under(base: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(str(base) + "/"):
                out.append(mp)
    return out


def _cleanup(base: Path, extra_loops: list[str]) -> None:
    for mp in sorted(_mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    for img in base.rglob("*.img"):
        for dev in loop_devices_for(img):
            subprocess.run(["losetup", "-d", dev], check=False)
    for dev in extra_loops:
        subprocess.run(["losetup", "-d", dev], check=False)
    shutil.rmtree(base, ignore_errors=True)


class Env:
    """A unique prefix and a private $CORRAL_DIR for one test."""

    def __init__(self) -> None:
        self.tag = "crt" + secrets.token_hex(3)[:5]
        self.base = Path(tempfile.mkdtemp(prefix=self.tag + "-"))
        self.loops: list[str] = []

    def pool(self, driver: str, suffix: str = "p", **config: str):
        return load_driver(driver)(f"{self.tag}{suffix}", config, self.base)

    def loop_device(self, size: int = 256 * 2**20) -> str:
        """A loop block device of our own, to test a block-device source."""
        img = self.base / f"{self.tag}-blk.raw"
        with open(img, "wb") as fh:
            fh.truncate(size)
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                             capture_output=True, text=True).stdout.strip()
        self.loops.append(dev)
        return dev


@pytest.fixture
def env():
    e = Env()
    try:
        yield e
    finally:
        _cleanup(e.base, e.loops)


def _raises(code: int, fn, *args, **kwargs) -> CorralError:
    with pytest.raises(CorralError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def _fill_rootfs(path: Path) -> None:
    (path / "rootfs" / "etc").mkdir(parents=True)
    (path / "rootfs" / "etc" / "hostname").write_text("image\n")
    (path / "metadata.yaml").write_text("architecture: x86_64\n")
    (path / "templates").mkdir()


# ---- pool lifecycle -----------------------------------------------------------------------

def test_btrfs_loop_pool_lifecycle(env):
    pool = env.pool("btrfs")
    config = pool.create()
    img = env.base / "disks" / f"{pool.pool}.img"
    assert config["source"] == str(img) and config["size"] == "5GiB"
    assert os.stat(img).st_blocks * 512 < 5 * 2**30  # sparse
    assert is_mounted(pool.path) and len(loop_devices_for(img)) == 1
    assert {"containers", "custom", "images"} <= set(os.listdir(pool.path))

    # a later process rebuilds the driver from the stored record
    again = load_driver("btrfs")(pool.pool, config, env.base)
    assert again.unmount() is True and not is_mounted(pool.path)
    assert loop_devices_for(img) == []
    assert again.unmount() is False
    assert again.mount() is True and is_mounted(pool.path)
    assert again.mount() is False
    assert (pool.path / "images").is_dir()

    again.delete()
    assert not img.exists() and not pool.path.exists()
    assert not is_mounted(pool.path)
    assert str(img) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                          text=True).stdout


@pytest.mark.parametrize("config", [
    {"bogus": "1"},
    {"size": "12XB"},
    {"size": "64MiB"},
    {"source": "relative/dir"},
    {"btrfs.mount_options": "ro;rm -rf /"},
    {"size": "1GiB", "source": "/dev/null-does-not-exist"},
])
def test_btrfs_invalid_config_makes_nothing(env, config):
    _raises(400, env.pool, "btrfs", **config)
    assert not (env.base / "storage-pools").exists() and not (env.base / "disks").exists()


@pytest.mark.parametrize("name", ["a/b", ".", "..", "with space", "x" * 65, "", "-rf"])
def test_invalid_pool_names(env, name):
    _raises(400, load_driver("dir"), name, {}, env.base)


def test_unknown_driver():
    _raises(400, load_driver, "zfs")


def test_btrfs_create_failure_undoes_everything(env):
    pool = env.pool("btrfs", size="256MiB", **{"btrfs.mount_options": "no_such_option"})
    _raises(500, pool.create)
    img = env.base / "disks" / f"{pool.pool}.img"
    assert not img.exists() and not pool.path.exists() and _mounts_under(env.base) == []
    assert str(img) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                          text=True).stdout


def test_btrfs_block_device_source(env):
    dev = env.loop_device()
    _raises(400, env.pool, "btrfs", source=dev, size="1GiB")
    pool = env.pool("btrfs", source=dev)
    assert pool.create()["source"] == dev
    assert is_mounted(pool.path)
    pool.create_empty_volume("custom", "data")
    assert pool.unmount() and pool.mount()
    assert pool.list_volumes() == [("custom", "data")]
    pool.delete()
    assert not pool.path.exists() and not is_mounted(pool.path)


def test_btrfs_directory_source_on_existing_btrfs(env):
    outer = env.pool("btrfs", "o", size="512MiB")
    outer.create()
    src = outer.path / "inner-src"
    inner = env.pool("btrfs", "i", source=str(src))
    inner.create()
    assert is_mounted(inner.path) and (src / "images").is_dir()
    inner.create_image_volume("f00", _fill_rootfs)
    inner.create_instance_from_image("c1", "f00")
    inner.delete()
    assert not src.exists() and not inner.path.exists()
    assert outer.list_volumes() == []
    outer.delete()


def test_dir_pool_with_source_bind_mount(env):
    src = env.base / "dirsrc"
    src.mkdir()
    pool = env.pool("dir", source=str(src))
    assert pool.create()["source"] == str(src)
    assert is_mounted(pool.path)
    pool.create_empty_volume("custom", "v")
    assert (src / "custom" / "v").is_dir()
    assert pool.unmount() and not is_mounted(pool.path) and pool.mount()
    pool.delete()
    assert src.is_dir() and os.listdir(src) == [] and not pool.path.exists()


def test_resources(env):
    pool = env.pool("btrfs", size="512MiB")
    pool.create()
    res = pool.resources()
    assert 0.8 * 512 * 2**20 <= res["space"]["total"] <= 512 * 2**20
    assert 0 < res["space"]["used"] < res["space"]["total"]
    dpool = env.pool("dir", "d")
    dpool.create()
    dres = dpool.resources()
    assert 0 < dres["space"]["used"] <= dres["space"]["total"]
    assert 0 < dres["inodes"]["used"] <= dres["inodes"]["total"]
    pool.unmount()
    _raises(409, pool.resources)
    pool.delete()
    dpool.delete()


# ---- volumes ------------------------------------------------------------------------------

def test_btrfs_image_readonly_and_instance_snapshot(env):
    pool = env.pool("btrfs", size="512MiB")
    pool.create()
    image = pool.create_image_volume("abc123", _fill_rootfs)
    assert pool.has_image_volume("abc123") and not pool.has_image_volume("nope")
    with pytest.raises(OSError):
        (image / "rootfs" / "new").write_text("x")
    _raises(409, pool.create_image_volume, "abc123", _fill_rootfs)

    root = pool.create_instance_from_image("c1", "abc123")
    assert root == pool.volume_path("container", "c1")
    (root / "rootfs" / "etc" / "hostname").write_text("c1\n")
    (root / "rootfs" / "new").write_text("x")
    assert (image / "rootfs" / "etc" / "hostname").read_text() == "image\n"
    assert not (image / "rootfs" / "new").exists()
    _raises(409, pool.create_instance_from_image, "c1", "abc123")
    _raises(404, pool.create_instance_from_image, "c2", "missing")

    # LXC may create nested subvolumes inside a rootfs; delete must cope
    subprocess.run(["btrfs", "subvolume", "create", str(root / "rootfs" / "n1")], check=True,
                   capture_output=True)
    subprocess.run(["btrfs", "subvolume", "create", str(root / "rootfs" / "n1" / "n2")],
                   check=True, capture_output=True)
    pool.create_empty_volume("custom", "data")
    assert pool.list_volumes() == [("container", "c1"), ("image", "abc123"),
                                   ("custom", "data")]
    pool.rename_volume("container", "c1", "c9")
    assert (pool.volume_path("container", "c9") / "rootfs" / "new").exists()
    pool.delete_volume("container", "c9")
    pool.delete_image_volume("abc123")
    pool.delete_volume("custom", "data")
    _raises(404, pool.delete_volume, "custom", "data")
    assert pool.list_volumes() == []
    pool.delete()


@pytest.mark.parametrize("driver", ["btrfs", "dir"])
def test_failing_fill_leaves_nothing(env, driver):
    pool = env.pool(driver, size="256MiB") if driver == "btrfs" else env.pool(driver)
    pool.create()

    def bad_fill(path: Path) -> None:
        _fill_rootfs(path)
        raise ValueError("truncated tarball")

    err = _raises(500, pool.create_image_volume, "deadbeef", bad_fill)
    assert "truncated tarball" in err.message

    def refusing_fill(path: Path) -> None:
        from shared.errors import BadRequest
        raise BadRequest("not an image")

    _raises(400, pool.create_image_volume, "deadbeef", refusing_fill)
    assert not pool.has_image_volume("deadbeef") and pool.list_volumes() == []
    assert not pool.volume_path("image", "deadbeef").exists()
    pool.delete()


@pytest.mark.parametrize("driver", ["btrfs", "dir"])
def test_snapshots_and_restore(env, driver):
    pool = env.pool(driver, size="256MiB") if driver == "btrfs" else env.pool(driver)
    pool.create()
    pool.create_image_volume("img", _fill_rootfs)
    root = pool.create_instance_from_image("c1", "img")
    hostname = root / "rootfs" / "etc" / "hostname"
    hostname.write_text("before\n")
    pool.create_snapshot("container", "c1", "snap0")
    _raises(409, pool.create_snapshot, "container", "c1", "snap0")
    hostname.write_text("after\n")
    assert pool.list_snapshots("container", "c1") == ["snap0"]
    pool.restore_snapshot("container", "c1", "snap0")
    assert hostname.read_text() == "before\n"
    _raises(404, pool.restore_snapshot, "container", "c1", "nope")
    pool.create_snapshot("container", "c1", "snap1")
    pool.delete_snapshot("container", "c1", "snap0")
    assert pool.list_snapshots("container", "c1") == ["snap1"]
    pool.delete_volume("container", "c1")  # takes its snapshots along
    assert not pool.snapshot_path("container", "c1", "snap1").exists()
    pool.delete()


def test_dir_copy_preserves_metadata(env):
    pool = env.pool("dir")
    pool.create()

    def fill(path: Path) -> None:
        r = path / "rootfs"
        r.mkdir()
        (r / "owned").write_text("x")
        os.chown(r / "owned", 1000, 1001)
        os.chmod(r / "owned", 0o640)
        (r / "suid").write_text("#!/bin/sh\n")
        os.chmod(r / "suid", 0o4755)
        os.symlink("owned", r / "link")
        os.mknod(r / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.link(r / "owned", r / "hard")
        os.setxattr(r / "owned", "user.corral", b"yes")

    pool.create_image_volume("img", fill)
    root = pool.create_instance_from_image("c1", "img") / "rootfs"
    st = os.lstat(root / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)
    assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
    assert os.readlink(root / "link") == "owned"
    dev = os.lstat(root / "null")
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert os.lstat(root / "hard").st_ino == st.st_ino and st.st_nlink == 2
    assert os.getxattr(root / "owned", "user.corral") == b"yes"
    _raises(400, pool.set_quota, "container", "c1", "1GiB")
    assert pool.volume_usage("container", "c1") is None
    pool.delete()
    assert not pool.path.exists()


def test_btrfs_quota_and_usage(env):
    pool = env.pool("btrfs", size="512MiB")
    pool.create()
    vol = pool.create_empty_volume("custom", "q")
    # Quotas are on from the pool's creation (disk usage in instance state needs them).
    assert pool.volume_usage("custom", "q") < 2**20
    pool.set_quota("custom", "q", "32MiB")
    (vol / "four").write_bytes(b"\1" * 4 * 2**20)
    os.sync()
    assert pool.volume_usage("custom", "q") >= 4 * 2**20
    with pytest.raises(OSError):
        with open(vol / "big", "wb") as fh:
            for _ in range(64):
                fh.write(b"\2" * 2**20)
            fh.flush()
            os.fsync(fh.fileno())
    (vol / "big").unlink()
    pool.create_snapshot("custom", "q", "s0")
    pool.restore_snapshot("custom", "q", "s0")  # the limit survives a restore
    assert referenced_limit(pool.volume_path("custom", "q")) == 32 * 2**20
    pool.set_quota("custom", "q", "")
    assert referenced_limit(pool.volume_path("custom", "q")) is None
    sized = pool.create_empty_volume("custom", "sized", size="64MiB")
    assert sized.is_dir()
    _raises(400, pool.set_quota, "custom", "q", "lots")
    pool.delete()


def test_volume_argument_errors(env):
    pool = env.pool("dir")
    pool.create()
    _raises(400, pool.create_empty_volume, "container", "bad/name")
    _raises(400, pool.create_empty_volume, "containers", "ok")
    _raises(400, pool.create_snapshot, "image", "x", "s")
    _raises(404, pool.volume_usage, "custom", "missing")
    pool.create_empty_volume("custom", "a")
    pool.create_empty_volume("custom", "b")
    _raises(409, pool.rename_volume, "custom", "a", "b")
    _raises(409, pool.create_empty_volume, "custom", "a")
    pool.delete()
    _raises(409, pool.list_volumes)
