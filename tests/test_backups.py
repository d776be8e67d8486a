"""Backups in LXD's format (issue 10): ``lxc export`` / ``lxc import`` and the REST API.

Through the stock ``lxc`` client: an export and import round trip with a snapshot and a
file, ``--instance-only``, ``--optimized-storage`` on btrfs (and its dir fallback), the
three LXD-made exports (plain, optimized, a custom volume: refused here with the right
command named) importing and starting with their snapshot and config, an import into a
second, separate Corral stack, bad input, and a crash mid-import leaving nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from services.storage.drivers import btrfs_util

from .stack import BIN, private_stack, socket_client
from .world import World, lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None or os.geteuid() != 0:
    pytest.skip("needs root and Debian's lxd-client", allow_module_level=True)

REF = Path("/work/shared/reference/lxd-5.0/exports")
PLAIN = REF / "lxd-export-refc.tar.gz"
OPTIMIZED = REF / "lxd-export-refc-optimized.tar.gz"
VOLUME = REF / "lxd-export-volume-refvol.tar.gz"


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


@pytest.fixture(scope="module")
def dworld(world, stack, api):
    """A dir pool and a profile on it, using ``world``'s image (one upload per stack)."""
    w = World(api, stack, world.prefix + "d", pool=world.prefix + "dp",
              profile=world.prefix + "dpr", image=world.image)
    assert api.post("/1.0/storage-pools", json={"name": w.pool, "driver": "dir"}
                    ).status_code == 200
    assert api.post("/1.0/profiles", json={"name": w.profile, "devices": {
        "root": {"type": "disk", "path": "/", "pool": w.pool}}}).status_code == 200
    try:
        yield w
    finally:
        for n in set(w.instances):
            w.remove(n)
        api.delete(f"/1.0/profiles/{w.profile}")
        api.delete(f"/1.0/storage-pools/{w.pool}")


@pytest.fixture(scope="module")
def other(request):
    """A second, separate Corral (its own nats-server and state dir): where exports go."""
    with private_stack(request, "backups") as s:
        yield s


@pytest.fixture(scope="module")
def oapi(other):
    with socket_client(other) as client:
        yield client


@pytest.fixture(scope="module")
def oworld(other, oapi, busybox_tarball):
    """The second stack's btrfs pool and bridge, and a ``default`` profile on them (LXD's
    exports name the profile ``default``; this stack is ours alone, so it may have one)."""
    with make_world(oapi, other, busybox_tarball, network=True, pool_driver="btrfs") as w:
        if oapi.get("/1.0/profiles/default").status_code == 404:
            r = oapi.post("/1.0/profiles", json={"name": "default"})
            assert r.status_code == 200, r.text
        r = oapi.put("/1.0/profiles/default", json={"config": {}, "devices": {
            "root": {"type": "disk", "path": "/", "pool": w.pool},
            "eth0": {"type": "nic", "network": w.net, "name": "eth0"}}})
        assert r.status_code == 200, r.text
        try:
            yield w
        finally:
            for n in oapi.get("/1.0/instances").json()["metadata"]:
                w.remove(n.rsplit("/", 1)[-1])
            r = oapi.put("/1.0/profiles/default", json={"config": {}, "devices": {}})
            assert r.status_code == 200, r.text


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as t:
        return {m.name: m for m in t.getmembers()}


def index_of(path: Path) -> dict:
    with tarfile.open(path) as t:
        f = t.extractfile("backup/index.yaml")
        assert f is not None
        return yaml.safe_load(f.read())


def import_(stack, path: Path, name: str, pool: str, check: bool = True):
    return lxc(stack, "import", str(path), name, "--storage", pool, check=check)


def test_reference_plain_export_imports_and_starts(oworld, other, oapi):
    world, stack, api = oworld, other, oapi
    name = world.name("refplain")
    import_(stack, PLAIN, name, world.pool)
    inst = world.get(name)
    assert inst["config"]["limits.memory"] == "128MiB"
    # LXD's volatile keys of its host are gone: the map is the one this host gave it
    assert "volatile.last_state.idmap" not in inst["config"]
    assert inst["config"]["volatile.idmap.next"] == inst["config"]["volatile.idmap.current"]
    assert inst["config"]["volatile.eth0.hwaddr"] == "00:16:3e:3a:72:ee"  # LXD keeps MACs
    assert inst["expanded_devices"]["root"]["pool"] == world.pool
    snaps = api.get(f"/1.0/instances/{name}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["snap0"]
    assert (world.volume(name) / "rootfs/bin/busybox").is_file()
    snap_dir = world.volume(name).parent.parent / "containers-snapshots" / name / "snap0"
    assert (snap_dir / "rootfs/bin/busybox").is_file()
    lxc(stack, "start", name)
    assert world.live(name)["status"] == "Running"
    out = lxc(stack, "exec", name, "--", "cat", "/etc/hostname").stdout
    assert out.strip() == name  # the image's create template, rendered for the new name
    uid = lxc(stack, "exec", name, "--", "stat", "-c", "%u", "/bin/busybox").stdout
    assert uid.strip() == "0"
    lxc(stack, "stop", name, "--force")


def test_export_import_round_trip_with_snapshot(world, stack, api, tmp_path):
    """lxc export (a snapshot and a file) then lxc import under another name: the file,
    the snapshot's own content and the config come back; the backup is gone after."""
    name = world.create("rt", start=True, config={"limits.memory": "96MiB"})
    lxc(stack, "exec", name, "--", "sh", "-c", "echo before > /root/note")
    lxc(stack, "snapshot", name, "s0")
    lxc(stack, "exec", name, "--", "sh", "-c", "echo after > /root/note")
    out = tmp_path / "rt.tar.gz"
    lxc(stack, "export", name, str(out))
    m = members(out)
    assert "backup/index.yaml" in m and "backup/container/rootfs/root/note" in m
    assert "backup/snapshots/s0/rootfs/root/note" in m
    assert "backup/container/backup.yaml" in m and "backup/container/metadata.yaml" in m
    assert m["backup/container/rootfs/bin/busybox"].uid == 0  # the container's own ids
    idx = index_of(out)
    assert idx["name"] == name and idx["backend"] == "btrfs" and idx["pool"] == world.pool
    assert idx["snapshots"] == ["s0"] and idx["type"] == "container"
    assert idx["optimized"] is False and idx["optimized_header"] is False
    assert idx["config"]["container"]["config"]["limits.memory"] == "96MiB"
    assert [s["name"] for s in idx["config"]["snapshots"]] == ["s0"]
    assert idx["config"]["pool"]["name"] == world.pool
    assert idx["config"]["volume"]["name"] == name
    # lxc export deleted its server-side backup afterwards
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
    copy = world.name("rt2")
    import_(stack, out, copy, world.pool)
    got = world.get(copy)
    assert got["config"]["limits.memory"] == "96MiB"
    snaps = api.get(f"/1.0/instances/{copy}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["s0"]
    lxc(stack, "start", copy)
    assert lxc(stack, "exec", copy, "--", "cat", "/root/note").stdout.strip() == "after"
    lxc(stack, "stop", copy, "--force")
    lxc(stack, "restore", copy, "s0")
    lxc(stack, "start", copy)
    assert lxc(stack, "exec", copy, "--", "cat", "/root/note").stdout.strip() == "before"
    lxc(stack, "stop", copy, "--force")
    lxc(stack, "stop", name, "--force")


def test_reference_optimized_export_imports_and_starts(oworld, other, oapi):
    world, stack, api = oworld, other, oapi
    name = world.name("refopt")
    import_(stack, OPTIMIZED, name, world.pool)
    inst = world.get(name)
    assert inst["config"]["limits.memory"] == "128MiB"
    snaps = api.get(f"/1.0/instances/{name}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["snap0"]
    snap_dir = world.volume(name).parent.parent / "containers-snapshots" / name / "snap0"
    assert (snap_dir / "rootfs/bin/busybox").is_file()
    lxc(stack, "start", name)
    assert world.live(name)["status"] == "Running"
    lxc(stack, "stop", name, "--force")


def test_import_without_storage_takes_the_profiles_pool(oworld, other, oapi):
    """LXD's export names pool ``default``, which this stack lacks: the root disk of the
    backup's profiles decides, as in LXD."""
    name = oworld.name("nopoolflag")
    lxc(other, "import", str(PLAIN), name)
    assert oapi.get(f"/1.0/instances/{name}").json()["metadata"]["expanded_devices"][
        "root"]["pool"] == oworld.pool
    assert (oworld.volume(name) / "rootfs/bin/busybox").is_file()


def test_reference_volume_export_is_not_an_instance(oworld, other, oapi):
    r = lxc(other, "import", str(VOLUME), "--storage", oworld.pool, check=False)
    assert r.returncode != 0 and "lxc storage volume import" in r.stderr


def test_optimized_round_trip_and_instance_only(world, stack, api, tmp_path):
    """--optimized-storage on btrfs: send streams and LXD's header; imported back with its
    snapshot. --instance-only: no snapshots in the tarball or the import."""
    name = world.create("opt", devices={"root": {"type": "disk", "path": "/",
                                                 "pool": world.pool, "size": "300MiB"}})
    lxc(stack, "snapshot", name, "s0")
    out = tmp_path / "opt.tar.gz"
    lxc(stack, "export", name, str(out), "--optimized-storage")
    m = members(out)
    assert set(m) == {"backup/index.yaml", "backup/optimized_header.yaml",
                      "backup/snapshots/s0.bin", "backup/container.bin"}, sorted(m)
    idx = index_of(out)
    assert idx["optimized"] is True and idx["optimized_header"] is True
    copy = world.name("opt2")
    import_(stack, out, copy, world.pool)
    assert btrfs_util.referenced_limit(world.volume(copy)) == 300 * 2**20  # root size
    snaps = api.get(f"/1.0/instances/{copy}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["s0"]
    lxc(stack, "start", copy)
    assert world.live(copy)["status"] == "Running"
    lxc(stack, "stop", copy, "--force")

    only = tmp_path / "only.tar.gz"
    lxc(stack, "export", name, str(only), "--instance-only")
    assert not any(n.startswith("backup/snapshots") for n in members(only))
    assert index_of(only)["snapshots"] in (None, [])
    third = world.name("only")
    import_(stack, only, third, world.pool)
    assert api.get(f"/1.0/instances/{third}/snapshots").json()["metadata"] == []


def test_dir_pool_export_and_optimized_fallback(dworld, stack, api, tmp_path):
    """A dir pool has no send streams: --optimized-storage gives a plain tarball (as
    LXD), and an optimized tarball is refused with the reason."""
    world = dworld
    name = world.create("dir")
    lxc(stack, "snapshot", name, "s0")
    out = tmp_path / "dir.tar.gz"
    lxc(stack, "export", name, str(out), "--optimized-storage")
    idx = index_of(out)
    assert idx["optimized"] is False and idx["backend"] == "dir"
    assert "backup/snapshots/s0/rootfs/bin/busybox" in members(out)
    copy = world.name("dir2")
    import_(stack, out, copy, world.pool)
    lxc(stack, "start", copy)
    assert world.live(copy)["status"] == "Running"
    lxc(stack, "stop", copy, "--force")


def test_optimized_into_a_dir_pool_is_refused(oworld, other, oapi):
    pool = f"{oworld.prefix}d"
    assert oapi.post("/1.0/storage-pools", json={"name": pool, "driver": "dir"}
                     ).status_code == 200
    try:
        name = oworld.name("diropt")
        r = import_(other, OPTIMIZED, name, pool, check=False)
        assert r.returncode != 0 and "differs from the target storage pool driver" in \
            r.stderr, r.stderr
        assert oapi.get(f"/1.0/instances/{name}").status_code == 404
        assert oapi.get(f"/1.0/storage-pools/{pool}/volumes/container"
                        ).json()["metadata"] == []
    finally:
        assert oapi.delete(f"/1.0/storage-pools/{pool}").status_code == 200


def test_import_into_a_second_corral(world, stack, oworld, other, oapi, tmp_path):
    """A Corral export imports into another Corral (its own state dir and bus)."""
    name = world.create("second")
    lxc(stack, "start", name)
    lxc(stack, "exec", name, "--", "sh", "-c", "echo moved > /root/where")
    lxc(stack, "snapshot", name, "s0")
    out = tmp_path / "second.tar.zst"
    lxc(stack, "export", name, str(out), "--compression", "zstd")
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    lxc(stack, "stop", name, "--force")
    target = oworld.name("second")
    # the backup names its profile: like LXD, the target must have one of that name
    r = import_(other, out, target, oworld.pool, check=False)
    assert r.returncode != 0 and f"Profile {world.profile!r} not found" in r.stderr
    assert oapi.post("/1.0/profiles", json={"name": world.profile}).status_code == 200
    try:
        import_(other, out, target, oworld.pool)
        snaps = oapi.get(f"/1.0/instances/{target}/snapshots").json()["metadata"]
        assert [s.rsplit("/", 1)[-1] for s in snaps] == ["s0"]
        got = oapi.get(f"/1.0/instances/{target}").json()["metadata"]
        assert got["devices"]["root"]["pool"] == oworld.pool  # the pool it went to
        lxc(other, "start", target)
        assert lxc(other, "exec", target, "--", "cat", "/root/where").stdout.strip() == \
            "moved"
        lxc(other, "stop", target, "--force")
    finally:
        oworld.remove(target)
        oapi.delete(f"/1.0/profiles/{world.profile}")


def test_backups_rest_api_and_lxc_info(world, stack, api):
    name = world.create("rest")
    monitor = subprocess.Popen(["lxc", "monitor", "--type", "lifecycle", "--format", "json"],
                               env={**stack.env, "LXD_DIR": str(stack.dir)},
                               stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(monitor.stdout), daemon=True)
    reader.start()
    # subscribed before the first backup event: an update of the instance shows up
    deadline = time.monotonic() + 30
    while not any('"instance-updated"' in line for line in list(lines)):
        assert time.monotonic() < deadline, "lxc monitor saw no event in 30 s"
        api.patch(f"/1.0/instances/{name}", json={"description": "probe"})
        time.sleep(0.3)
    r = api.post(f"/1.0/instances/{name}/backups", json={
        "name": "b1", "compression_algorithm": "none", "expires_at": None})
    op = world.wait(r)
    assert op["resources"]["backups"] == ["/1.0/backups/b1"]
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == \
        [f"/1.0/instances/{name}/backups/b1"]
    full = api.get(f"/1.0/instances/{name}/backups", params={"recursion": 1}).json()
    b = full["metadata"][0]
    assert b["name"] == "b1" and b["instance_only"] is False
    assert b["optimized_storage"] is False and b["expires_at"] == "0001-01-01T00:00:00Z"
    assert api.get(f"/1.0/instances/{name}/backups/b1").json()["metadata"]["name"] == "b1"
    assert "b1" in lxc(stack, "info", name).stdout
    # no copy of the instance: the backup is a read-only snapshot of its volume
    frozen = world.volume(name).parent.parent / ".corral-backups/containers" / name / "b1"
    show = subprocess.run(["btrfs", "subvolume", "show", str(frozen / "volume")],
                          capture_output=True, text=True, check=True).stdout
    orig = subprocess.run(["btrfs", "subvolume", "show", str(world.volume(name))],
                          capture_output=True, text=True, check=True).stdout

    def field(text: str, key: str) -> str:
        return next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                    if ln.strip().startswith(key + ":"))
    assert field(show, "Parent UUID") == field(orig, "UUID")
    assert "readonly" in field(show, "Flags")
    assert not any((stack.dir / "tmp").glob("*backup*")) if (stack.dir / "tmp").exists() \
        else True
    # the default name is backupN, one more than the highest
    world.wait(api.post(f"/1.0/instances/{name}/backups", json={}))
    names = [b["name"] for b in api.get(f"/1.0/instances/{name}/backups",
                                        params={"recursion": 1}).json()["metadata"]]
    assert sorted(names) == ["b1", "backup0"]
    world.wait(api.post(f"/1.0/instances/{name}/backups/b1", json={"name": "b2"}))
    assert api.get(f"/1.0/instances/{name}/backups/b1").status_code == 404
    with api.stream("GET", f"/1.0/instances/{name}/backups/b2/export") as resp:
        assert resp.status_code == 200
        data = b"".join(resp.iter_bytes())
    with tarfile.open(fileobj=__import__("io").BytesIO(data), mode="r:") as t:
        first = t.next()
        assert first is not None and first.name == "backup/index.yaml"
        assert "backup/container/rootfs/bin/busybox" in t.getnames()
    # bad input
    assert api.post(f"/1.0/instances/{name}/backups", json={"name": "b2"}).status_code == 409
    assert api.post(f"/1.0/instances/{name}/backups", json={"name": "a/b"}).status_code == 400
    r = api.post(f"/1.0/instances/{name}/backups", json={"compression_algorithm": "lz77"})
    assert r.status_code == 400 and "compression" in r.json()["error"]
    assert api.get(f"/1.0/instances/{name}/backups/nope").status_code == 404
    assert api.get(f"/1.0/instances/{name}/backups/nope/export").status_code == 404
    assert api.get("/1.0/instances/nope-x/backups").status_code == 404
    for b in ("b2", "backup0"):
        world.wait(api.delete(f"/1.0/instances/{name}/backups/{b}"))
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
    # an expired backup is gone when its time comes, with its frozen copies
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    world.wait(api.post(f"/1.0/instances/{name}/backups", json={"name": "brief",
                                                                "expires_at": soon}))
    assert (frozen.parent / "brief").is_dir()
    time.sleep(2.5)
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
    assert api.get(f"/1.0/instances/{name}/backups/brief").status_code == 404
    assert not (frozen.parent / "brief").exists()
    time.sleep(0.5)
    # SIGTERM: a test run as a background job inherits SIGINT ignored, and so would lxc
    monitor.terminate()
    monitor.wait(timeout=10)
    reader.join(timeout=10)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    seen = [(e["metadata"]["action"], e["metadata"]["source"]) for e in events
            if "backup" in e["metadata"]["action"]]
    base = f"/1.0/instances/{name}/backups"
    for want in [("instance-backup-created", f"{base}/b1"),
                 ("instance-backup-renamed", f"{base}/b2"),
                 ("instance-backup-retrieved", f"{base}/b2"),
                 ("instance-backup-deleted", f"{base}/b2")]:
        assert want in seen, seen
    frozen = world.volume(name).parent.parent / ".corral-backups" / "containers" / name
    assert not any(frozen.glob("*")) if frozen.exists() else True


def _tarball(tmp_path: Path, name: str, entries: list[tuple[tarfile.TarInfo, bytes | None]],
             index: dict) -> Path:
    out = tmp_path / name
    with tarfile.open(out, "w:gz") as t:
        raw = yaml.safe_dump(index).encode()
        info = tarfile.TarInfo("backup/index.yaml")
        info.size = len(raw)
        t.addfile(info, __import__("io").BytesIO(raw))
        for info, data in entries:
            t.addfile(info, __import__("io").BytesIO(data) if data is not None else None)
    return out


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    if data is not None:
        info.size = len(data)
    info.linkname = link
    return info, data


def test_bad_imports_leave_nothing(world, stack, api, tmp_path):
    pool = world.pool
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tarball" * 100)
    r = import_(stack, junk, world.name("junk"), pool, check=False)
    assert r.returncode != 0 and "Invalid backup" in r.stderr
    r = import_(stack, PLAIN, world.name("nopool"), "no-such-pool", check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    taken = world.create("taken")
    r = import_(stack, PLAIN, taken, pool, check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    # a symlink out of the volume, then a file through it: refused, nothing written
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = _tarball(tmp_path, "evil.tar.gz", [
        _entry("backup/container", tarfile.DIRTYPE),
        _entry("backup/container/rootfs", tarfile.DIRTYPE),
        _entry("backup/container/rootfs/x", tarfile.SYMTYPE, link=str(outside)),
        _entry("backup/container/rootfs/x/pwned", data=b"gotcha")],
        {"name": "evil", "type": "container", "snapshots": [], "backend": "dir",
         "config": {"container": {"profiles": [world.profile], "config": {},
                                  "devices": {}}}})
    r = import_(stack, evil, world.name("evil"), pool, check=False)
    assert r.returncode != 0 and "leaves the volume" in r.stderr, r.stderr
    assert not (outside / "pwned").exists()
    # a tarball cut short mid-way (a failed upload): the half volume goes
    whole = tmp_path / "whole.tar.gz"
    lxc(stack, "export", taken, str(whole))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    r = import_(stack, cut, world.name("cut"), pool, check=False)
    assert r.returncode != 0 and "damaged" in r.stderr, r.stderr
    for tag in ("junk", "nopool", "evil", "cut"):
        n = f"{world.prefix}-{tag}"
        assert api.get(f"/1.0/instances/{n}").status_code == 404
        assert not world.volume(n).exists()
        assert not (world.volume(n).parent.parent / "containers-snapshots" / n).exists()
    vols = {v.rsplit("/", 1)[-1] for v in api.get(
        f"/1.0/storage-pools/{pool}/volumes/container").json()["metadata"]}
    assert taken in vols
    assert not vols & {f"{world.prefix}-{t}" for t in ("junk", "nopool", "evil", "cut")}


@pytest.mark.parametrize("service,point", [("storage", "import:after_volume"),
                                           ("instance", "import:after_storage"),
                                           ("instance", "import:before_done")])
def test_crash_mid_import_leaves_nothing(oworld, other, oapi, service, point):
    """The storage or the instance service killed mid-import: the client hears of it, and
    once the service is back nothing stays (instance, volume, snapshots, KV records)."""
    from .test_faults import (
        assert_clean,
        kv_records,
        restart,
        start_again,
        wait_dead,
        wait_final,
    )

    name = oworld.name(f"crash{point.split(':')[1].replace('_', '')}")
    restart(other, service, fault=point)
    armed = True
    try:
        r = oapi.post("/1.0/instances", content=PLAIN.read_bytes(), headers={
            "Content-Type": "application/octet-stream", "X-LXD-name": name,
            "X-LXD-pool": oworld.pool})
        assert r.status_code == 202, r.text
        wait_dead(other, service)
        # restarted first: its start fails what the dead one left (test_faults times the
        # gateway's sweep of a dead owner's operations; here it would only add ~8 s)
        start_again(other, service)  # disarmed
        armed = False
        op = wait_final(oapi, r.json()["operation"])
        assert op["status"] == "Failure", op
    finally:
        if service not in other.procs:
            start_again(other, service)
        elif armed:  # it never died: disarm it
            restart(other, service)
    assert_clean(oworld, timeout=60)
    snaps = oworld.volume(name).parent.parent / "containers-snapshots" / name
    assert not snaps.exists()
    assert not [r for r in kv_records(other, "instance_snapshots") if r["instance"] == name]
    assert oapi.get(f"/1.0/instances/{name}").status_code == 404
    import_(other, PLAIN, name, oworld.pool)  # the name is free again
    oworld.remove(name)


def corral(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_corral_export_import(world, stack, api, tmp_path):
    name = world.create("cli")
    lxc(stack, "snapshot", name, "s0")
    out = tmp_path / "cli.tar.xz"
    r = corral(stack, "export", name, str(out), "--compression", "xz")
    assert str(out) in r.stdout and out.read_bytes()[:6] == b"\xfd7zXZ\x00"
    assert "backup/snapshots/s0/rootfs/bin/busybox" in members(out)
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
    only = tmp_path / "only.tar"
    corral(stack, "export", name, str(only), "--instance-only", "--compression", "none",
           "--optimized-storage")
    assert set(members(only)) == {"backup/index.yaml", "backup/optimized_header.yaml",
                                  "backup/container.bin"}
    copy = world.name("cli2")
    r = corral(stack, "import", str(out), copy, "--storage", world.pool)
    assert copy in r.stdout
    snaps = api.get(f"/1.0/instances/{copy}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["s0"]
    third = world.name("cli3")
    corral(stack, "import", str(only), third, "-s", world.pool)
    assert api.get(f"/1.0/instances/{third}/snapshots").json()["metadata"] == []
    r = corral(stack, "import", str(out), copy, check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = corral(stack, "export", "no-such-instance", str(tmp_path / "x"), check=False)
    assert r.returncode != 0 and not (tmp_path / "x").exists()


def test_backups_go_with_their_instance(world, stack, api):
    """A renamed instance keeps its backups; a deleted instance's are not the next
    same-named instance's, and their frozen copies go."""
    name = world.create("gone")
    world.wait(api.post(f"/1.0/instances/{name}/backups", json={"name": "b"}))
    frozen = world.volume(name).parent.parent / ".corral-backups/containers" / name / "b"
    assert frozen.is_dir()
    renamed = world.name("gone2")
    lxc(stack, "move", name, renamed)  # a rename: the backup follows, as in LXD
    assert api.get(f"/1.0/instances/{renamed}/backups").json()["metadata"] == \
        [f"/1.0/instances/{renamed}/backups/b"]
    moved = frozen.parent.parent / renamed / "b"
    assert moved.is_dir() and not frozen.exists()
    lxc(stack, "move", renamed, name)
    assert api.get(f"/1.0/instances/{name}/backups/b").status_code == 200
    lxc(stack, "delete", name)
    world.create("gone")
    assert api.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
    assert not frozen.exists()
    world.wait(api.post(f"/1.0/instances/{name}/backups", json={"name": "b"}))
    assert frozen.is_dir()


def test_crash_mid_backup_leaves_nothing(oworld, other, oapi):
    """The instance service killed after the backup's record or after freezing: at its
    next start the backup is gone, record and frozen copies."""
    from .test_faults import kv_records, restart, start_again, wait_dead, wait_final

    name = oworld.create("bkcrash")
    frozen = oworld.volume(name).parent.parent / ".corral-backups/containers" / name
    for point in ("backup:after_record", "backup:after_freeze"):
        restart(other, "instance", fault=point)
        armed = True
        try:
            r = oapi.post(f"/1.0/instances/{name}/backups", json={"name": "b"})
            assert r.status_code == 202, r.text
            wait_dead(other, "instance")
            # restarted first: its start fails what the dead one left (test_faults times the
            # gateway's sweep of a dead owner's operations; here it would only add ~8 s)
            start_again(other, "instance")  # disarmed
            armed = False
            assert wait_final(oapi, r.json()["operation"])["status"] == "Failure"
        finally:
            if "instance" not in other.procs:
                start_again(other, "instance")
            elif armed:  # it never died: disarm it
                restart(other, "instance")
        assert oapi.get(f"/1.0/instances/{name}/backups").json()["metadata"] == []
        assert not [r for r in kv_records(other, "backups") if r["instance"] == name]
        assert not (frozen / "b").exists(), point
    oworld.wait(oapi.post(f"/1.0/instances/{name}/backups", json={"name": "b"}))
    assert (frozen / "b").is_dir()


def test_export_import_in_a_project(world, stack, api, tmp_path):
    """A backup imports into another project beside its same-named source, and exports
    from there (volumes are <project>_<name> on disk, as LXD's)."""
    proj = f"{world.prefix}bp"
    r = api.post("/1.0/projects", json={"name": proj, "config": {
        "features.images": "false", "features.profiles": "false"}})
    assert r.status_code in (200, 201), r.text
    a = world.create("prj")
    try:
        lxc(stack, "start", a)
        lxc(stack, "exec", a, "--", "sh", "-c", "echo project > /root/v")
        lxc(stack, "snapshot", a, "s0")
        out = tmp_path / "a.tar.gz"
        lxc(stack, "export", a, str(out))
        lxc(stack, "import", str(out), a, "--project", proj, "--storage", world.pool)
        assert (world.volume(f"{proj}_{a}") / "rootfs/root/v").is_file()
        snaps = api.get(f"/1.0/instances/{a}/snapshots", params={"project": proj}).json()
        assert [s.rsplit("/", 1)[-1].split("?")[0] for s in snaps["metadata"]] == ["s0"]
        lxc(stack, "start", a, "--project", proj)
        got = lxc(stack, "exec", a, "--project", proj, "--", "cat", "/root/v").stdout
        assert got.strip() == "project"
        lxc(stack, "stop", a, "--project", proj, "--force")
        again = tmp_path / "again.tar.gz"
        lxc(stack, "export", a, str(again), "--project", proj)
        assert index_of(again)["snapshots"] == ["s0"]
    finally:
        lxc(stack, "delete", "--force", a, "--project", proj, check=False)
        lxc(stack, "delete", "--force", a, check=False)
        api.delete(f"/1.0/projects/{proj}")


def test_import_into_a_full_pool_leaves_nothing(world, stack, api, tmp_path):
    """A backup larger than the pool: the import fails saying the pool is full, and the
    half-written volume goes (LXD users lose imports to full disks too)."""
    import gzip

    pool = f"{world.prefix}small"
    assert api.post("/1.0/storage-pools", json={"name": pool, "driver": "btrfs",
                                                "config": {"size": "160MiB"}}
                    ).status_code == 200
    try:
        big = tmp_path / "big.tar.gz"
        index = {"name": "big", "type": "container", "snapshots": [], "backend": "btrfs",
                 "config": {"container": {"profiles": [world.profile], "config": {},
                                          "devices": {}}}}
        with gzip.open(big, "wb", compresslevel=1) as gz, \
                tarfile.open(fileobj=gz, mode="w|") as t:
            raw = yaml.safe_dump(index).encode()
            info = tarfile.TarInfo("backup/index.yaml")
            info.size = len(raw)
            t.addfile(info, __import__("io").BytesIO(raw))
            for d in ("backup/container", "backup/container/rootfs"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            info = tarfile.TarInfo("backup/container/rootfs/zeros")
            info.size = 400 * 2**20

            class Zeros:
                left = info.size

                def read(self, n: int) -> bytes:
                    n = min(n, self.left)
                    self.left -= n
                    return bytes(n)
            t.addfile(info, Zeros())  # type: ignore[arg-type]
        name = world.name("full")
        r = import_(stack, big, name, pool, check=False)
        assert r.returncode != 0 and "is full" in r.stderr, r.stderr
        assert api.get(f"/1.0/instances/{name}").status_code == 404
        assert api.get(f"/1.0/storage-pools/{pool}/volumes/container"
                       ).json()["metadata"] == []
        assert not (stack.dir / "storage-pools" / pool / "containers" / name).exists()
    finally:
        assert api.delete(f"/1.0/storage-pools/{pool}").status_code == 200


def test_a_download_broken_off_stops_the_export(world, stack, api):
    """The client goes away mid-download: the tarball stops being made, and the backup
    can be downloaded again and deleted (nothing hangs)."""
    name = world.create("brk")
    world.wait(api.post(f"/1.0/instances/{name}/backups", json={
        "name": "b", "compression_algorithm": "none"}))
    with api.stream("GET", f"/1.0/instances/{name}/backups/b/export") as resp:
        assert resp.status_code == 200
        next(resp.iter_bytes())
    with api.stream("GET", f"/1.0/instances/{name}/backups/b/export") as resp:
        size = sum(len(c) for c in resp.iter_bytes())
    assert size > 1_000_000
    world.wait(api.delete(f"/1.0/instances/{name}/backups/b"))
