"""Disk devices other than the root: host directories and files, custom volumes, limits,
hot-plug into running containers, through the stock ``lxc`` client (and the REST API
where the client cannot say it). Every check looks inside the container or on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .stack import BIN, wait_for
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.custom = []  # custom volumes made here: removed before the pool
        try:
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            for vol in w.custom:
                r = api.delete(f"/1.0/storage-pools/{w.pool}/volumes/custom/{vol}")
                if r.status_code == 202:
                    w.wait(r)
                shutil.rmtree(stack.dir / "storage-pools" / w.pool / "custom" / vol,
                              ignore_errors=True)


@pytest.fixture(scope="module")
def running(world):
    return world.create("run", start=True)


@pytest.fixture
def host_dir(tmp_path):
    """A host directory with one file, readable by anyone (an unprivileged container sees
    host root's files as nobody's)."""
    d = tmp_path / "share"
    d.mkdir()
    (d / "hello").write_text("from the host\n")
    d.chmod(0o755)
    tmp_path.chmod(0o755)
    return d


def _sh(stack, name: str, script: str, check: bool = True):
    return lxc(stack, "exec", name, "--", "sh", "-c", script, check=check)


def _mounted(stack, name: str, path: str) -> bool:
    mounts = _sh(stack, name, "cat /proc/mounts").stdout
    return any(line.split()[1] == path for line in mounts.splitlines())


def _devices(api, name: str) -> dict:
    return api.get(f"/1.0/instances/{name}").json()["metadata"]["devices"]


def _refused(stack, *args: str) -> str:
    r = lxc(stack, *args, check=False)
    assert r.returncode != 0, (args, r.stdout)
    return r.stderr


def _custom_volume(world, name: str, *args: str) -> Path:
    """A custom volume of the world's dir pool, made through the stock client."""
    world.custom.append(name)
    lxc(world.stack, "storage", "volume", "create", world.pool, name, *args)
    path = world.stack.dir / "storage-pools" / world.pool / "custom" / name
    assert path.is_dir()
    return path


def test_host_dir_at_start_readonly(world, stack, api, host_dir, tmp_path):
    name = world.create("atstart")
    lxc(stack, "config", "device", "add", name, "share", "disk", f"source={host_dir}",
        "path=/mnt/share", "readonly=true")
    # A boot script reads the disk: it is mounted before the container's init runs.
    script = tmp_path / "S10disk"
    script.write_text("#!/bin/sh\ncat /mnt/share/hello > /root/seen-at-boot\n")
    lxc(stack, "file", "push", "--mode", "0755", str(script), f"{name}/etc/init.d/S10disk")
    lxc(stack, "start", name)
    assert _sh(stack, name, "cat /mnt/share/hello").stdout == "from the host\n"
    wait_for(lambda: _sh(stack, name, "cat /root/seen-at-boot", check=False).stdout
             == "from the host\n", 10, what="the boot script's copy")
    r = _sh(stack, name, "touch /mnt/share/new", check=False)
    assert r.returncode != 0 and "Read-only" in r.stderr, r
    assert not (host_dir / "new").exists()
    # Without shift, host root's files are nobody's inside (an unprivileged container).
    assert _sh(stack, name, "stat -c %u /mnt/share/hello").stdout.strip() == "65534"


def test_host_dir_hotplugged_and_removed(world, stack, api, running, host_dir):
    lxc(stack, "config", "device", "add", running, "hp", "disk", f"source={host_dir}",
        "path=/mnt/hp", "readonly=true")
    assert _sh(stack, running, "cat /mnt/hp/hello").stdout == "from the host\n"
    r = _sh(stack, running, "echo x > /mnt/hp/hello", check=False)
    assert r.returncode != 0, r
    assert (host_dir / "hello").read_text() == "from the host\n"
    lxc(stack, "config", "device", "remove", running, "hp")
    assert not _mounted(stack, running, "/mnt/hp")
    assert _sh(stack, running, "cat /mnt/hp/hello", check=False).returncode != 0
    assert "hp" not in _devices(api, running)


def test_host_file_hotplugged(world, stack, running, tmp_path):
    f = tmp_path / "motd"
    f.write_text("single file\n")
    f.chmod(0o644)
    tmp_path.chmod(0o755)
    lxc(stack, "config", "device", "add", running, "motd", "disk", f"source={f}",
        "path=/etc/corral-motd")
    assert _sh(stack, running, "cat /etc/corral-motd").stdout == "single file\n"
    lxc(stack, "config", "device", "remove", running, "motd")
    assert not _mounted(stack, running, "/etc/corral-motd")


def test_recursive_takes_submounts_along(world, stack, running, host_dir):
    sub = host_dir / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(sub)],
                   check=True)
    try:
        (sub / "inner").write_text("submount\n")
        (sub / "inner").chmod(0o644)
        lxc(stack, "config", "device", "add", running, "rec", "disk", f"source={host_dir}",
            "path=/mnt/rec", "recursive=true")
        lxc(stack, "config", "device", "add", running, "flat", "disk", f"source={host_dir}",
            "path=/mnt/flat")
        assert _sh(stack, running, "cat /mnt/rec/sub/inner").stdout == "submount\n"
        assert _sh(stack, running, "cat /mnt/flat/sub/inner", check=False).returncode != 0
        lxc(stack, "config", "device", "remove", running, "rec")
        lxc(stack, "config", "device", "remove", running, "flat")
        assert not _mounted(stack, running, "/mnt/rec/sub")
    finally:
        subprocess.run(["umount", "-l", str(sub)], check=False)


def test_shift_maps_host_root_to_container_root(world, stack, running, host_dir):
    lxc(stack, "config", "device", "add", running, "sh", "disk", f"source={host_dir}",
        "path=/mnt/shifted", "shift=true")
    try:
        assert _sh(stack, running, "stat -c %u:%g /mnt/shifted/hello").stdout.strip() \
            == "0:0"
        _sh(stack, running, "echo inside > /mnt/shifted/made")
        st = os.stat(host_dir / "made")
        assert (st.st_uid, st.st_gid) == (0, 0)  # container root is host root here
    finally:
        lxc(stack, "config", "device", "remove", running, "sh")


def test_custom_volume_attached_is_writable_by_container_root(world, stack, api, running):
    vol = f"{world.prefix}v1"
    path = _custom_volume(world, vol)
    lxc(stack, "storage", "volume", "attach", world.pool, vol, running, "/mnt/vol")
    dev = _devices(api, running)[vol]
    assert dev == {"type": "disk", "pool": world.pool, "source": vol, "path": "/mnt/vol"}
    shown = lxc(stack, "storage", "volume", "show", world.pool, vol).stdout
    assert f"/1.0/instances/{running}" in shown, shown  # used_by
    _sh(stack, running, "echo data > /mnt/vol/f && chown 1000:1000 /mnt/vol/f")
    assert _sh(stack, running, "stat -c %u:%g /mnt/vol/f").stdout.strip() == "1000:1000"
    assert (path / "f").read_text() == "data\n"
    st = os.stat(path / "f")
    assert (st.st_uid, st.st_gid) == (1000, 1000)  # stored unshifted, as LXD's volumes
    # The volume now survives a restart of the container too (mounted at start).
    lxc(stack, "restart", running, "--force")
    assert _sh(stack, running, "cat /mnt/vol/f").stdout == "data\n"
    err = _refused(stack, "storage", "volume", "delete", world.pool, vol)  # in use
    assert running in err or "in use" in err, err
    lxc(stack, "storage", "volume", "detach", world.pool, vol, running)
    assert not _mounted(stack, running, "/mnt/vol")
    assert vol not in _devices(api, running)


def test_privileged_container_and_frozen_hotplug(world, stack, api, host_dir):
    name = world.create("priv", start=True, config={"security.privileged": "true"})
    lxc(stack, "pause", name)
    lxc(stack, "config", "device", "add", name, "p", "disk", f"source={host_dir}",
        "path=/srv/p")
    lxc(stack, "start", name)  # unpause
    assert _sh(stack, name, "stat -c %u /srv/p/hello").stdout.strip() == "0"
    _sh(stack, name, "echo priv > /srv/p/w")
    assert os.stat(host_dir / "w").st_uid == 0


def test_unmapped_custom_volume_keeps_host_ids(world, stack, running):
    vol = f"{world.prefix}um"
    path = _custom_volume(world, vol, "security.unmapped=true")
    (path / "f").write_text("host\n")
    lxc(stack, "storage", "volume", "attach", world.pool, vol, running, "/mnt/um")
    try:  # host root's file, not mapped: nobody's inside the container
        assert _sh(stack, running, "stat -c %u /mnt/um/f").stdout.strip() == "65534"
    finally:
        lxc(stack, "storage", "volume", "detach", world.pool, vol, running)


def test_custom_volume_in_use_elsewhere_is_refused(world, stack, api, running):
    vol = f"{world.prefix}v2"
    _custom_volume(world, vol)
    lxc(stack, "config", "device", "add", running, "v2", "disk", f"pool={world.pool}",
        f"source={vol}", "path=/mnt/v2")
    other = world.create("other", start=True)
    err = _refused(stack, "config", "device", "add", other, "v2", "disk",
                   f"pool={world.pool}", f"source={vol}", "path=/mnt/v2")
    assert "already in use" in err and running in err, err
    assert "v2" not in _devices(api, other)
    assert not _mounted(stack, other, "/mnt/v2")
    # A stopped instance may hold it; its start is refused while the other one runs.
    idle = world.create("idle")
    lxc(stack, "config", "device", "add", idle, "v2", "disk", f"pool={world.pool}",
        f"source={vol}", "path=/mnt/v2")
    err = _refused(stack, "start", idle)
    assert "already in use" in err, err
    assert world.live(idle)["status"] == "Stopped"
    lxc(stack, "config", "device", "remove", running, "v2")
    lxc(stack, "start", idle)
    assert _mounted(stack, idle, "/mnt/v2")


def test_create_with_a_missing_source_is_refused_at_once(world, stack, api, tmp_path):
    name = world.name("nosrc")
    r = api.post("/1.0/instances", json={
        "name": name, "source": {"type": "image", "alias": world.image},
        "profiles": [world.profile],
        "devices": {"d": {"type": "disk", "source": f"{tmp_path}/gone", "path": "/mnt"}}})
    assert r.status_code == 400 and "Missing source path" in r.text, r.text
    assert api.get(f"/1.0/instances/{name}").status_code == 404


def _corral(stack, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_corral_cli_hotplugs_host_dir_and_volume(world, stack, api, running, host_dir):
    _corral(stack, "config", "device", "add", running, "cd", "disk", f"source={host_dir}",
            "path=/mnt/cd")
    assert _sh(stack, running, "cat /mnt/cd/hello").stdout == "from the host\n"
    _corral(stack, "config", "device", "remove", running, "cd")
    assert not _mounted(stack, running, "/mnt/cd")
    vol = f"{world.prefix}cv"
    _custom_volume(world, vol)
    _corral(stack, "storage", "volume", "attach", world.pool, vol, running, "/mnt/cv")
    _sh(stack, running, "touch /mnt/cv/x")
    _corral(stack, "storage", "volume", "detach", world.pool, vol, running)
    assert not _mounted(stack, running, "/mnt/cv")


def test_block_volume_on_a_container_is_refused(world, stack, api, running):
    vol = f"{world.prefix}blk"
    _custom_volume(world, vol, "--type=block", "size=8MiB")
    err = _refused(stack, "config", "device", "add", running, "blk", "disk",
                   f"pool={world.pool}", f"source={vol}", "path=/mnt/blk")
    assert "block volumes cannot be used on containers" in err, err
    assert "blk" not in _devices(api, running)


def test_bad_disks_are_refused_with_the_reason(world, stack, api, running, tmp_path):
    before = _devices(api, running)
    missing = tmp_path / "nope"
    err = _refused(stack, "config", "device", "add", running, "d", "disk",
                   f"source={missing}", "path=/mnt/d")
    assert "Missing source path" in err and str(missing) in err, err
    r = api.patch(f"/1.0/instances/{running}", json={"devices": {"d": {
        "type": "disk", "source": str(missing), "path": "/mnt/d"}}})
    assert r.status_code == 400, r.text
    err = _refused(stack, "config", "device", "add", running, "d", "disk",
                   f"source={tmp_path}", "path=mnt/d")
    assert "must be absolute" in err, err
    err = _refused(stack, "config", "device", "add", running, "d", "disk",
                   "source=relative/dir", "path=/mnt/d")
    assert "absolute" in err, err
    err = _refused(stack, "storage", "volume", "attach", world.pool, "nosuchvol", running,
                   "/mnt/x")
    assert "not found" in err, err
    err = _refused(stack, "config", "device", "add", running, "d", "disk",
                   f"pool={world.pool}", "source=../../etc", "path=/mnt/d")
    assert "custom volume name" in err, err
    err = _refused(stack, "config", "device", "add", running, "d", "disk",
                   f"source={tmp_path}", "path=/mnt/a/../../etc")
    assert "'..'" in err, err
    r = api.patch(f"/1.0/instances/{running}", json={"devices": {
        "a": {"type": "disk", "source": str(tmp_path), "path": "/mnt/same"},
        "b": {"type": "disk", "source": str(tmp_path), "path": "/mnt/same"}}})
    assert r.status_code == 400 and "same path" in r.text, r.text
    assert _devices(api, running) == before


def test_restricted_project_source_may_not_escape_by_link(world, stack, api, tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "etc").symlink_to("/etc")
    project = f"{world.prefix}rp"
    lxc(stack, "project", "create", project, "-c", "restricted=true",
        "-c", "restricted.devices.disk=allow", "-c", f"restricted.devices.disk.paths={ok}",
        "-c", "features.images=false")
    root = {"type": "disk", "path": "/", "pool": world.pool}
    try:
        body = {"source": {"type": "image", "alias": world.image}, "profiles": ["default"]}
        r = api.post("/1.0/instances", params={"project": project}, json={
            **body, "name": "esc", "devices": {"root": root, "d": {
                "type": "disk", "source": str(ok / "etc"), "path": "/mnt/e"}}})
        assert r.status_code == 400, r.text
        assert "resolves outside" in r.json()["error"], r.text
        r = api.post("/1.0/instances", params={"project": project}, json={
            **body, "name": "esc", "devices": {"root": root, "d": {
                "type": "disk", "source": f"{ok}/../../../etc", "path": "/mnt/e"}}})
        assert r.status_code == 400 and "'..'" in r.json()["error"], r.text
        assert api.get("/1.0/instances", params={"project": project}).json()[
            "metadata"] == []
    finally:
        lxc(stack, "project", "delete", project, check=False)


def test_a_vanished_source_does_not_block_other_disks(world, stack, api, running,
                                                       tmp_path, host_dir):
    gone = tmp_path / "gone"
    gone.mkdir()
    gone.chmod(0o755)
    tmp_path.chmod(0o755)
    lxc(stack, "config", "device", "add", running, "gone", "disk", f"source={gone}",
        "path=/mnt/gone")
    gone.rmdir()  # the host's directory goes; the container keeps its mount
    lxc(stack, "config", "device", "add", running, "other", "disk", f"source={host_dir}",
        "path=/mnt/other")
    assert _sh(stack, running, "cat /mnt/other/hello").stdout == "from the host\n"
    lxc(stack, "config", "device", "remove", running, "gone")
    lxc(stack, "config", "device", "remove", running, "other")
    assert not _mounted(stack, running, "/mnt/gone")
    assert not _mounted(stack, running, "/mnt/other")


def test_disk_that_cannot_be_mounted_fails_the_start_with_the_reason(world, stack, api,
                                                                      tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    name = world.create("badmount")
    lxc(stack, "config", "device", "add", name, "f", "disk", f"source={f}", "path=/etc")
    err = _refused(stack, "start", name)
    assert "could not be mounted" in err and "/etc in the instance" in err, err
    assert world.live(name)["status"] == "Stopped"
    lxc(stack, "config", "device", "remove", name, "f")
    lxc(stack, "start", name)


def test_optional_missing_source_is_skipped(world, stack, api, tmp_path):
    name = world.create("opt")
    lxc(stack, "config", "device", "add", name, "o", "disk", f"source={tmp_path}/nope",
        "path=/mnt/o", "optional=true")
    lxc(stack, "start", name)
    assert not _mounted(stack, name, "/mnt/o")


def test_failed_hotplug_leaves_instance_as_it_was(world, stack, api, running, host_dir,
                                                  tmp_path):
    """Two disks in one PATCH, the second cannot be mounted (a file onto a directory):
    the first one is unmounted again and the record keeps its devices."""
    f = tmp_path / "afile"
    f.write_text("x")
    before = _devices(api, running)
    r = api.patch(f"/1.0/instances/{running}", json={"devices": {
        "a1": {"type": "disk", "source": str(host_dir), "path": "/mnt/a1"},
        "z9": {"type": "disk", "source": str(f), "path": "/etc"}}})
    assert r.status_code == 400, r.text
    assert "Failed to mount" in r.json()["error"], r.text
    assert "/etc in the instance is not" in r.json()["error"], r.text
    assert _devices(api, running) == before
    assert not _mounted(stack, running, "/mnt/a1")
    assert _sh(stack, running, "ls /etc/passwd").returncode == 0  # /etc untouched


def test_profile_disk_reaches_running_container(world, stack, api, running, host_dir):
    lxc(stack, "profile", "device", "add", world.profile, "pshare", "disk",
        f"source={host_dir}", "path=/mnt/profile")
    try:
        assert _sh(stack, running, "cat /mnt/profile/hello").stdout == "from the host\n"
    finally:
        lxc(stack, "profile", "device", "remove", world.profile, "pshare")
    assert not _mounted(stack, running, "/mnt/profile")
    # A profile disk its instances cannot have is refused before the profile is saved.
    before = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"]
    err = _refused(stack, "profile", "device", "add", world.profile, "bad", "disk",
                   f"source={host_dir}/nope", "path=/mnt/bad")
    assert "Missing source path" in err, err
    assert api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["devices"] == before


def _blkio(world, name: str, item: str) -> str:
    pid = world.live(name)["pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "blkio" in ctrls.split(","):
            parts = path.split("/")
            marker = f"lxc.payload.{name}"
            if marker in parts:
                path = "/".join(parts[: parts.index(marker) + 1])
            return Path(f"/sys/fs/cgroup/blkio{path}/{item}").read_text()
    pytest.skip("no cgroup v1 blkio controller on this host")


def test_disk_limits_applied_live_or_refused(world, stack, api, running, host_dir):
    st = os.stat(host_dir)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sys_dev = Path(f"/sys/dev/block/{major}:{minor}")
    if (sys_dev / "partition").exists():
        major, minor = map(int, (sys_dev.resolve().parent / "dev").read_text().split(":"))
    lxc(stack, "config", "device", "add", running, "lim", "disk", f"source={host_dir}",
        "path=/mnt/lim", "limits.read=10MB", "limits.write=200iops")
    try:
        assert f"{major}:{minor} 10000000" in _blkio(world, running,
                                                     "blkio.throttle.read_bps_device")
        assert f"{major}:{minor} 200" in _blkio(world, running,
                                                "blkio.throttle.write_iops_device")
        # Really throttled: 2 MB read directly (no page cache) at 1 MB/s.
        (host_dir / "big").write_bytes(os.urandom(2 * 10**6))
        (host_dir / "big").chmod(0o644)
        lxc(stack, "config", "device", "set", running, "lim", "limits.read=1MB")
        t0 = time.monotonic()
        _sh(stack, running, "dd if=/mnt/lim/big of=/dev/null bs=64k iflag=direct")
        assert time.monotonic() - t0 > 1.2
        lxc(stack, "config", "device", "set", running, "lim", "limits.read=5MB")
        assert f"{major}:{minor} 5000000" in _blkio(world, running,
                                                    "blkio.throttle.read_bps_device")
    finally:
        lxc(stack, "config", "device", "remove", running, "lim")
    assert f"{major}:{minor}" not in _blkio(world, running, "blkio.throttle.read_bps_device")
    # Set while stopped: applied at start.
    name = world.create("limstart")
    lxc(stack, "config", "device", "add", name, "lim", "disk", f"source={host_dir}",
        "path=/mnt/lim", "limits.max=3MB")
    lxc(stack, "start", name)
    assert f"{major}:{minor} 3000000" in _blkio(world, name,
                                                "blkio.throttle.write_bps_device")
    # A source on no block device (tmpfs) cannot be throttled: refused, not pretended.
    if os.path.isdir("/dev/shm"):
        err = _refused(stack, "config", "device", "add", running, "shm", "disk",
                       "source=/dev/shm", "path=/mnt/shm", "limits.read=1MB")
        assert "not on a block device" in err, err

