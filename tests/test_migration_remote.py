"""LXD's migration API between two separate Corral installations (issue 13, "Migration
service"): ``lxc copy`` and ``lxc move`` with the stock client, pull mode (its default).

The session's stack is the source (listening on HTTPS: the client gives the target the
source's operation URL); a private stack (its own nats-server and CORRAL_DIR) is the
target, which dials the source's ``/1.0/operations/<id>/websocket`` with its own server
certificate. Content is checked inside the copy once started, snapshots on disk.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import free_port, private_stack, socket_client, wait_for
from tests.test_vms import libvirtd, upload_split, vm_image  # noqa: F401
from tests.world import make_world, wait_op

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def other(request):
    """The target: a second, separate Corral."""
    with private_stack(request, "migrate") as s:
        for d in (s.dir.parent, s.dir):  # unprivileged roots traverse these
            d.chmod(d.stat().st_mode | 0o011)
        yield s


@pytest.fixture(scope="module")
def oapi(other):
    with socket_client(other, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def https(api):
    """The source listens on HTTPS for the time of the module."""
    before = api.get("/1.0").json()["metadata"]["config"].get("core.https_address", "")
    address = f"127.0.0.1:{free_port()}"
    r = api.patch("/1.0", json={"config": {"core.https_address": address}})
    assert r.status_code == 200, r.text
    yield address
    api.patch("/1.0", json={"config": {"core.https_address": before}})


@pytest.fixture(scope="module")
def worlds(api, stack, oapi, other, busybox_tarball, https):
    """A world on the source (pool, profile, image) and the same pool and profile names on
    the target (the copy keeps its profiles, as LXD's, so they must exist there)."""
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        r = oapi.post("/1.0/storage-pools", json={"name": w.pool, "driver": "dir"})
        assert r.status_code == 200, r.text
        r = oapi.post("/1.0/profiles", json={"name": w.profile, "devices": {
            "root": {"type": "disk", "path": "/", "pool": w.pool}}})
        assert r.status_code == 200, r.text
        try:
            yield w
        finally:
            for inst in oapi.get("/1.0/instances").json()["metadata"]:
                name = inst.rsplit("/", 1)[-1]
                if name.startswith(w.prefix):
                    r = oapi.put(f"/1.0/instances/{name}/state",
                                 json={"action": "stop", "force": True})
                    if r.status_code == 202:
                        wait_op(oapi, r, ok=False)
                    r = oapi.delete(f"/1.0/instances/{name}")
                    if r.status_code == 202:
                        wait_op(oapi, r, ok=False)
            oapi.delete(f"/1.0/profiles/{w.profile}")
            oapi.delete(f"/1.0/storage-pools/{w.pool}")


@pytest.fixture
def client(stack, other, tmp_path) -> dict[str, str]:
    """The stock client with two unix remotes: ``src`` (this stack), ``dst`` (the other)."""
    conf = tmp_path / "lxc"
    conf.mkdir(mode=0o700)
    env = {**stack.env, "LXD_CONF": str(conf)}
    env.pop("LXD_DIR", None)
    lxc(env, "remote", "add", "src", f"unix://{stack.socket}")
    lxc(env, "remote", "add", "dst", f"unix://{other.socket}")
    return env


def lxc(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        print(r.stderr)
        raise AssertionError(f"lxc {' '.join(args)} failed: {r.stderr}")
    return r


def write_marker(w: Any, name: str, text: str) -> None:
    (w.volume(name) / "rootfs" / "root").mkdir(exist_ok=True)
    (w.volume(name) / "rootfs" / "root" / "marker").write_text(text)


def snapshot(w: Any, name: str, snap: str) -> None:
    w.wait(w.api.post(f"/1.0/instances/{name}/snapshots", json={"name": snap}))


def target_paths(other: Any, pool: str, name: str) -> list[Path]:
    """Everything of instance ``name`` under the target's pool (volume and snapshots)."""
    root = other.dir / "storage-pools" / pool
    return sorted(p for p in root.glob(f"*/{name}*"))


def inventory(oapi: httpx.Client, other: Any, pool: str, name: str) -> dict[str, Any]:
    return {"instance": oapi.get(f"/1.0/instances/{name}").status_code,
            "paths": target_paths(other, pool, name),
            "staging": sorted((other.dir / "migration").glob("*"))
            if (other.dir / "migration").is_dir() else []}


CLEAN = {"instance": 404, "paths": [], "staging": []}


def test_copy_with_snapshots_then_move(api, stack, oapi, other, worlds, client):
    w = worlds
    c1 = w.create("c1")
    write_marker(w, c1, "first")
    snapshot(w, c1, "s1")
    write_marker(w, c1, "second")
    snapshot(w, c1, "s2")
    write_marker(w, c1, "now")

    lxc(client, "copy", f"src:{c1}", f"dst:{c1}")
    inst = oapi.get(f"/1.0/instances/{c1}").json()["metadata"]
    assert inst["status"] == "Stopped" and inst["profiles"] == [w.profile]
    snaps = oapi.get(f"/1.0/instances/{c1}/snapshots?recursion=1").json()["metadata"]
    assert [s["name"] for s in snaps] == ["s1", "s2"]
    src_snaps = api.get(f"/1.0/instances/{c1}/snapshots?recursion=1").json()["metadata"]
    # LXD's Snapshot message carries seconds
    assert [s["created_at"][:19] for s in snaps] == [s["created_at"][:19] for s in src_snaps]
    for snap, text in (("s1", "first"), ("s2", "second")):
        found = [p for p in target_paths(other, w.pool, c1) if p.name == snap] or \
            list((other.dir / "storage-pools" / w.pool).glob(f"**/{c1}/{snap}"))
        assert found, target_paths(other, w.pool, c1)
        assert (found[0] / "rootfs" / "root" / "marker").read_text() == text
    # the copy runs, and holds the source's content
    lxc(client, "start", f"dst:{c1}")
    try:
        out = lxc(client, "exec", f"dst:{c1}", "--", "cat", "/root/marker").stdout
        assert out.strip() == "now"
    finally:
        lxc(client, "stop", "--force", f"dst:{c1}")
    assert api.get(f"/1.0/instances/{c1}").status_code == 200  # the source stays

    # progress was in the source operation's metadata
    ops = api.get("/1.0/operations?recursion=1").json()["metadata"]
    done = [o for o in ops.get("success") or []
            if f"/1.0/instances/{c1}" in (o.get("resources") or {}).get("instances", [])
            and "fs_progress" in (o.get("metadata") or {})]
    assert done, ops
    tops = oapi.get("/1.0/operations?recursion=1").json()["metadata"]
    assert [o for o in tops.get("success") or []
            if f"/1.0/instances/{c1}" in (o.get("resources") or {}).get("instances", [])
            and "fs_progress" in (o.get("metadata") or {})], tops  # and the target's

    # --instance-only: no snapshots follow
    lxc(client, "copy", "--instance-only", f"src:{c1}", f"dst:{c1}-only")
    assert oapi.get(f"/1.0/instances/{c1}-only/snapshots").json()["metadata"] == []
    vol = other.dir / "storage-pools" / w.pool / "containers" / f"{c1}-only"
    assert (vol / "rootfs" / "root" / "marker").read_text() == "now"

    # move: the source goes once the target has it
    c2 = w.create("c2")
    write_marker(w, c2, "moved")
    snapshot(w, c2, "m1")
    lxc(client, "move", f"src:{c2}", f"dst:{c2}")
    assert api.get(f"/1.0/instances/{c2}").status_code == 404
    assert oapi.get(f"/1.0/instances/{c2}").status_code == 200
    assert [s["name"] for s in oapi.get(f"/1.0/instances/{c2}/snapshots?recursion=1")
            .json()["metadata"]] == ["m1"]
    vol = other.dir / "storage-pools" / w.pool / "containers" / c2
    assert (vol / "rootfs" / "root" / "marker").read_text() == "moved"


@pytest.fixture(scope="module")
def other_https(oapi):
    """The target listens on HTTPS too (push mode: the source dials the target)."""
    address = f"127.0.0.1:{free_port()}"
    r = oapi.patch("/1.0", json={"config": {"core.https_address": address}})
    assert r.status_code == 200, r.text
    yield address
    oapi.patch("/1.0", json={"config": {"core.https_address": ""}})


@pytest.mark.parametrize("mode", ["push", "relay"])
def test_copy_in_push_and_relay_modes(api, oapi, other, worlds, client, other_https, mode):
    """``--mode push``: the source dials the target's operation; ``--mode relay``: the
    client dials both and relays the messages (barriers included)."""
    w = worlds
    c = w.create(mode)
    write_marker(w, c, "before")
    snapshot(w, c, "p1")
    write_marker(w, c, mode)
    lxc(client, "copy", "--mode", mode, f"src:{c}", f"dst:{c}")
    assert [s["name"] for s in oapi.get(f"/1.0/instances/{c}/snapshots?recursion=1")
            .json()["metadata"]] == ["p1"]
    vol = other.dir / "storage-pools" / w.pool / "containers" / c
    assert (vol / "rootfs" / "root" / "marker").read_text() == mode
    snap = list((other.dir / "storage-pools" / w.pool).glob(f"**/{c}/p1"))
    assert snap and (snap[0] / "rootfs" / "root" / "marker").read_text() == "before"
    assert api.get(f"/1.0/instances/{c}").status_code == 200


def test_name_taken_on_target_is_409(api, oapi, other, worlds, client):
    w = worlds
    c = w.create("dup")
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr, r.stderr
    r = oapi.post("/1.0/instances", json={"name": c, "source": {
        "type": "migration", "mode": "pull", "operation": "https://127.0.0.1:1/1.0/operations/x",
        "certificate": "x", "secrets": {"control": "a", "fs": "b"}}})
    assert r.status_code == 409, r.text


def test_bad_input_leaves_nothing(api, stack, oapi, other, worlds, https):
    w = worlds
    name = f"{w.prefix}-bad"
    base = {"name": name, "profiles": [w.profile]}
    # secrets missing: 400 at once
    r = oapi.post("/1.0/instances", json={**base, "source": {
        "type": "migration", "mode": "pull", "operation": f"https://{https}/1.0/operations/x"}})
    assert r.status_code == 400 and "secrets" in r.json()["error"], r.text
    # a profile the target lacks: 404 before any transfer (the copy keeps its profiles)
    r = oapi.post("/1.0/instances", json={**base, "profiles": [f"{w.prefix}-nope"], "source": {
        "type": "migration", "mode": "pull", "operation": f"https://{https}/1.0/operations/x",
        "certificate": "x", "secrets": {"control": "a", "fs": "b"}}})
    assert r.status_code == 404 and "-nope' not found" in r.json()["error"], r.text
    # an operation the source does not have (or that vanished): the operation fails
    cert = api.get("/1.0").json()["metadata"]["environment"]["certificate"]
    r = oapi.post("/1.0/instances", json={**base, "source": {
        "type": "migration", "mode": "pull", "certificate": cert,
        "operation": f"https://{https}/1.0/operations/00000000-0000-0000-0000-000000000000",
        "secrets": {"control": "a" * 64, "fs": "b" * 64}}})
    assert r.status_code == 202, r.text
    op = wait_op(oapi, r, ok=False)
    assert op["status"] == "Failure" and "refused" in op["err"], op
    assert inventory(oapi, other, w.pool, name) == CLEAN
    # no certificate to pin: 400; a certificate that is not the source's: it fails
    r = oapi.post("/1.0/instances", json={**base, "source": {
        "type": "migration", "mode": "pull", "secrets": {"control": "a", "fs": "b"},
        "operation": f"https://{https}/1.0/operations/x"}})
    assert r.status_code == 400 and "certificate" in r.json()["error"], r.text
    wrong = oapi.get("/1.0").json()["metadata"]["environment"]["certificate"]
    src0 = w.create("pin")
    sop = api.post(f"/1.0/instances/{src0}", json={"migration": True}).json()["metadata"]
    r = oapi.post("/1.0/instances", json={**base, "source": {
        "type": "migration", "mode": "pull", "certificate": wrong,
        "operation": f"https://{https}/1.0/operations/{sop['id']}",
        "secrets": sop["metadata"]}})
    op = wait_op(oapi, r, ok=False)
    assert op["status"] == "Failure" and "certificate" in op["err"], op
    assert inventory(oapi, other, w.pool, name) == CLEAN
    # a real source operation, a wrong secret
    src = w.create("src")
    r = api.post(f"/1.0/instances/{src}", json={"migration": True, "live": False})
    assert r.status_code == 202, r.text
    sop = r.json()["metadata"]
    assert set(sop["metadata"]) == {"control", "fs"}
    r = oapi.post("/1.0/instances", json={**base, "source": {
        "type": "migration", "mode": "pull", "certificate": cert,
        "operation": f"https://{https}/1.0/operations/{sop['id']}",
        "secrets": {"control": "c" * 64, "fs": sop["metadata"]["fs"]}}})
    op = wait_op(oapi, r, ok=False)
    assert op["status"] == "Failure", op
    assert inventory(oapi, other, w.pool, name) == CLEAN
    # the source operation gives up when nobody connects; the source is whole
    r = api.delete(f"/1.0/operations/{sop['id']}")
    assert api.get(f"/1.0/instances/{src}").status_code == 200
    # a source instance that does not exist: 404 from the source
    r = api.post(f"/1.0/instances/{w.prefix}-nothere", json={"migration": True})
    assert r.status_code == 404, r.text


def _restart_migration(other: Any, oapi: httpx.Client, fault: str | None) -> None:
    other.stop("migration")
    if fault:
        other.env["CORRAL_FAULT"] = fault
    else:
        other.env.pop("CORRAL_FAULT", None)
    other.start("migration")

    def answers() -> bool:  # a 400 (not a 503) means the service took the request
        r = oapi.post("/1.0/instances", json={"name": "x", "source": {"type": "migration"}})
        return r.status_code == 400
    wait_for(answers, 60, what="the migration service to answer")


@pytest.mark.parametrize("point", ["migration:sink_after_snapshot"])
def test_target_killed_mid_transfer_leaves_nothing(api, oapi, other, worlds, client, point):
    w = worlds
    c = w.create("fault")
    write_marker(w, c, "whole")
    snapshot(w, c, "f1")
    _restart_migration(other, oapi, point)
    try:
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)
        assert r.returncode != 0
        assert oapi.get(f"/1.0/instances/{c}").status_code == 404
        assert target_paths(other, w.pool, c) == []
        assert list((other.dir / "migration").glob("*")), "the kill left its staging"
    finally:
        _restart_migration(other, oapi, None)
    assert inventory(oapi, other, w.pool, c) == CLEAN  # the next start cleaned it
    # the source is whole and still copies
    assert [s["name"] for s in api.get(f"/1.0/instances/{c}/snapshots?recursion=1")
            .json()["metadata"]] == ["f1"]
    assert (w.volume(c) / "rootfs" / "root" / "marker").read_text() == "whole"
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    assert oapi.get(f"/1.0/instances/{c}").status_code == 200


# -- from a real LXD 5.0 ---------------------------------------------------------------------

LXD_EXPORT = Path("/work/shared/reference/lxd-5.0/exports/lxd-export-refc.tar.gz")


@pytest.fixture(scope="module")
def lxd():
    """A private LXD 5.0 daemon (its own LXD_DIR, a bridge of its own, a dir pool) holding
    ``refc`` (imported from the reference export, one snapshot), started once so that its
    tree is shifted on disk, with a marker file; listening on HTTPS on loopback."""
    import shutil
    import signal
    import time

    if not shutil.which("lxd") or not LXD_EXPORT.exists():
        pytest.skip("no LXD 5.0 daemon or reference export on this host")
    if Path("/var/lib/lxd/unix.socket").exists():
        # LXD daemons share one nftables table (inet lxd): a private one beside the host's
        # would add to it and leave it behind
        pytest.skip("an LXD daemon runs on this host: no private one beside it")
    import tempfile
    import uuid

    from services.network.subnet import pick_free_ipv4_subnet

    had_table = subprocess.run(["nft", "list", "table", "inet", "lxd"],
                               capture_output=True).returncode == 0
    bridge = f"lxm{uuid.uuid4().hex[:8]}"  # LXD leaves its bridges behind at shutdown
    gateway = next(pick_free_ipv4_subnet([]).hosts())  # from local facts, never a probe

    # not under pytest's 0700 tmp: the container's unprivileged root traverses the path
    base = Path(tempfile.mkdtemp(prefix="corral-lxd-"))
    base.chmod(0o711)
    env = {**__import__("os").environ, "LXD_DIR": str(base / "dir"),
           "LXD_CONF": str(base / "conf")}
    (base / "dir").mkdir()
    port = free_port()
    proc = subprocess.Popen(["lxd", "--group", "root", "--logfile", str(base / "lxd.log")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        subprocess.run(["lxd", "waitready", "--timeout", "60"], env=env, check=True)
        preseed = f"""config:
  core.https_address: 127.0.0.1:{port}
networks:
- name: {bridge}
  type: bridge
  config: {{ipv4.address: {gateway}/24, ipv4.nat: "false", ipv6.address: none}}
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root: {{path: /, pool: default, type: disk}}
"""
        subprocess.run(["lxd", "init", "--preseed"], input=preseed, text=True, env=env,
                       check=True)
        lxc(env, "import", str(LXD_EXPORT))
        lxc(env, "start", "refc")
        lxc(env, "exec", "refc", "--", "sh", "-c", "echo from-lxd > /root/marker")
        lxc(env, "stop", "-f", "refc")
        yield env
    finally:
        log = base / "lxd.log"
        if log.exists():  # shown on failures: what the reference daemon said
            print("\n--- lxd.log (tail) ---\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-30:]))
        subprocess.run(["lxd", "shutdown", "--timeout", "30"], env=env, capture_output=True)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        time.sleep(0.5)
        subprocess.run(["umount", "-l", str(base / "dir" / "shmounts")], capture_output=True)
        subprocess.run(["umount", "-l", str(base / "dir" / "devlxd")], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        if not had_table:
            subprocess.run(["nft", "delete", "table", "inet", "lxd"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", ["pull", "push", "relay"])
def test_copy_from_lxd(lxd, oapi, other, worlds, client, other_https, mode):
    """``lxc copy lxd:refc dst:`` from a real LXD 5.0, in each mode (push: LXD dials our
    target operation): its snapshot follows, its shifted tree comes back to the
    container's own ids, and the copy runs here."""
    w = worlds
    name = f"{w.prefix}-fromlxd-{mode}"
    lxc(client, "remote", "add", "lxd", f"unix://{lxd['LXD_DIR']}/unix.socket")
    if oapi.get("/1.0/profiles/default").status_code == 404:  # LXD's instance names it
        assert oapi.post("/1.0/profiles", json={"name": "default"}).status_code == 200
    lxc(client, "copy", "--mode", mode, "lxd:refc", f"dst:{name}", "--storage", w.pool)
    assert [s["name"] for s in oapi.get(f"/1.0/instances/{name}/snapshots?recursion=1")
            .json()["metadata"]] == ["snap0"]
    vol = other.dir / "storage-pools" / w.pool / "containers" / name
    assert (vol / "rootfs" / "root" / "marker").stat().st_uid == 0
    assert (vol / "rootfs" / "bin").stat().st_uid == 0
    lxc(client, "start", f"dst:{name}")
    try:
        out = lxc(client, "exec", f"dst:{name}", "--", "cat", "/root/marker").stdout
        assert out.strip() == "from-lxd"
    finally:
        lxc(client, "stop", "--force", f"dst:{name}")


@pytest.mark.parametrize("mode", ["pull", "push", "relay"])
def test_copy_to_lxd(lxd, api, worlds, client, mode):
    """The other way: ``lxc copy src:c lxd:c`` into the real LXD 5.0, in each mode (pull:
    LXD dials our source operation; push: we dial LXD's target operation); the copy
    starts there and holds our content and snapshot."""
    w = worlds
    c = w.create(f"tolxd-{mode}")
    write_marker(w, c, "to-lxd")
    snapshot(w, c, "l1")
    lxc(client, "remote", "add", "lxd", f"unix://{lxd['LXD_DIR']}/unix.socket")
    # the copy and its snapshots keep their profiles, as between two LXDs: LXD needs it
    lxc(client, "profile", "create", f"lxd:{w.profile}")
    lxc(client, "profile", "device", "add", f"lxd:{w.profile}", "root", "disk", "path=/",
        "pool=default")
    try:
        lxc(client, "copy", "--mode", mode, f"src:{c}", f"lxd:{c}")
        info = lxc(client, "info", f"lxd:{c}").stdout
        assert "l1" in info, info
        lxc(client, "start", f"lxd:{c}")
        out = lxc(client, "exec", f"lxd:{c}", "--", "cat", "/root/marker").stdout
        assert out.strip() == "to-lxd"
    finally:
        lxc(client, "delete", "--force", f"lxd:{c}", check=False)
        lxc(client, "profile", "delete", f"lxd:{w.profile}", check=False)


def test_source_killed_mid_transfer_leaves_nothing(api, stack, oapi, other, worlds, client):
    """The source's migration service dies after the first snapshot: its operation fails
    (the gateway sees its owner gone), the gateway closes the websockets, the target gives
    up and removes what it received; the source is whole."""
    w = worlds
    c = w.create("srcfault")
    write_marker(w, c, "kept")
    snapshot(w, c, "k1")
    _restart_migration(stack, api, "migration:source_after_snapshot")
    try:
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)
        assert r.returncode != 0
        wait_for(lambda: inventory(oapi, other, w.pool, c) == CLEAN, 60,
                 what="the target to drop what it received")
    finally:
        _restart_migration(stack, api, None)
    assert [s["name"] for s in api.get(f"/1.0/instances/{c}/snapshots?recursion=1")
            .json()["metadata"]] == ["k1"]
    assert (w.volume(c) / "rootfs" / "root" / "marker").read_text() == "kept"
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    assert oapi.get(f"/1.0/instances/{c}").status_code == 200


@pytest.fixture(scope="module")
def btrfs_pool(api, oapi, worlds):
    """A btrfs pool of the same name on both sides, and a profile whose root disk is on it."""
    w = worlds
    pool, profile = f"{w.prefix}b", f"{w.prefix}bpr"
    made: list[tuple[httpx.Client, str]] = []
    try:
        for side in (api, oapi):
            r = side.post("/1.0/storage-pools", json={"name": pool, "driver": "btrfs",
                                                      "config": {"size": "768MiB"}})
            assert r.status_code == 200, r.text
            made.append((side, f"/1.0/storage-pools/{pool}"))
            r = side.post("/1.0/profiles", json={"name": profile, "devices": {
                "root": {"type": "disk", "path": "/", "pool": pool}}})
            assert r.status_code == 200, r.text
            made.append((side, f"/1.0/profiles/{profile}"))
        yield pool, profile
    finally:
        for side in (api, oapi):
            for inst in side.get("/1.0/instances?recursion=1").json()["metadata"]:
                root = [d for d in inst["expanded_devices"].values()
                        if d.get("type") == "disk" and d.get("path") == "/"]
                if inst["name"].startswith(w.prefix) and (
                        profile in inst["profiles"] or root and root[0].get("pool") == pool):
                    r = side.delete(f"/1.0/instances/{inst['name']}")
                    if r.status_code == 202:
                        wait_op(side, r, ok=False)
        for side, path in reversed(made):
            r = side.delete(path)
            if r.status_code == 202:
                wait_op(side, r, ok=False)


def btrfs_instance(api: httpx.Client, stack: Any, w: Any, pool: str, profile: str,
                   tag: str) -> tuple[str, Path]:
    """A container on the btrfs pool with snapshot ``b1`` (marker "old" and 4 MiB of
    data) and, after it, marker "new": (name, its volume)."""
    c = w.name(tag)
    w.wait(api.post("/1.0/instances", json={
        "name": c, "source": {"type": "image", "alias": w.image}, "profiles": [profile]}))
    vol = stack.dir / "storage-pools" / pool / "containers" / c
    (vol / "rootfs" / "root").mkdir(exist_ok=True)
    (vol / "rootfs" / "root" / "marker").write_text("old")
    (vol / "rootfs" / "root" / "data").write_bytes(os.urandom(4 << 20))
    subprocess.run(["sync"], check=True)
    snapshot(w, c, "b1")
    (vol / "rootfs" / "root" / "marker").write_text("new")
    return c, vol


def exclusive_bytes(path: Path) -> int:
    """Bytes of the subvolume at ``path`` shared with no other (``btrfs filesystem du``)."""
    subprocess.run(["sync"], check=True)
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[1])


def frozen_left(stack: Any, pool: str) -> list[Path]:
    """Read-only copies a btrfs send left on the source pool (backups' and migrations')."""
    return sorted((stack.dir / "storage-pools" / pool / ".corral-backups").glob("*/*/*"))


def test_copy_between_btrfs_pools(api, stack, oapi, other, worlds, client, btrfs_pool):
    """Both pools btrfs: the header negotiates BTRFS (as LXD's), each snapshot then the
    volume go as btrfs send streams, the volume's against the snapshot: on the target the
    volume shares the snapshot's extents (rsync would have written the 4 MiB twice). The
    snapshot is a read-only subvolume; the source's read-only copies are gone."""
    w = worlds
    pool, profile = btrfs_pool
    c, _vol = btrfs_instance(api, stack, w, pool, profile, "b")
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    snap = list((other.dir / "storage-pools" / pool).glob(f"**/{c}/b1"))
    assert snap and (snap[0] / "rootfs" / "root" / "marker").read_text() == "old"
    probe = subprocess.run(["btrfs", "property", "get", "-ts", str(snap[0]), "ro"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "ro=true", probe.stdout + probe.stderr
    target = other.dir / "storage-pools" / pool / "containers" / c
    assert (target / "rootfs" / "root" / "marker").read_text() == "new"
    assert (target / "rootfs" / "root" / "data").stat().st_size == 4 << 20
    assert exclusive_bytes(target) < 1 << 20, "the volume was not sent against b1"
    assert frozen_left(stack, pool) == []
    assert [s["name"] for s in oapi.get(f"/1.0/instances/{c}/snapshots?recursion=1")
            .json()["metadata"]] == ["b1"]
    # the copy is a working instance: it starts
    r = oapi.put(f"/1.0/instances/{c}/state", json={"action": "start"})
    assert r.status_code == 202 and wait_op(oapi, r)["status"] == "Success"
    r = oapi.put(f"/1.0/instances/{c}/state", json={"action": "stop", "force": True})
    wait_op(oapi, r)


def test_copy_between_btrfs_and_dir_pools_uses_rsync(api, stack, oapi, other, worlds,
                                                     client, btrfs_pool):
    """btrfs to dir (``--storage``: the target answers RSYNC to the BTRFS offer) and dir
    to btrfs (RSYNC offered): both copies whole, with their snapshot; on btrfs the rsync'd
    volume holds its own copy of the data (no send stream to share it)."""
    w = worlds
    pool, profile = btrfs_pool
    c, _vol = btrfs_instance(api, stack, w, pool, profile, "bd")
    lxc(client, "copy", f"src:{c}", f"dst:{c}", "--storage", w.pool)
    target = other.dir / "storage-pools" / w.pool / "containers" / c
    assert (target / "rootfs" / "root" / "marker").read_text() == "new"
    snap = list((other.dir / "storage-pools" / w.pool).glob(f"**/{c}/b1"))
    assert snap and (snap[0] / "rootfs" / "root" / "marker").read_text() == "old"
    assert frozen_left(stack, pool) == []

    d = w.create("db")
    write_marker(w, d, "first")
    (w.volume(d) / "rootfs" / "root" / "data").write_bytes(os.urandom(4 << 20))
    snapshot(w, d, "d1")
    write_marker(w, d, "second")
    lxc(client, "copy", f"src:{d}", f"dst:{d}", "--storage", pool)
    target = other.dir / "storage-pools" / pool / "containers" / d
    assert (target / "rootfs" / "root" / "marker").read_text() == "second"
    snap = list((other.dir / "storage-pools" / pool).glob(f"**/{d}/d1"))
    assert snap and (snap[0] / "rootfs" / "root" / "marker").read_text() == "first"
    assert exclusive_bytes(target) >= 4 << 20  # rsync: written again, nothing shared


def test_btrfs_target_killed_mid_transfer_leaves_nothing(api, stack, oapi, other, worlds,
                                                        client, btrfs_pool):
    """The target dies after the snapshot's send stream: nothing on the target (no
    subvolume, no record, staging cleaned at the next start), the source whole and its
    read-only copies dropped; the copy then works."""
    w = worlds
    pool, profile = btrfs_pool
    c, vol = btrfs_instance(api, stack, w, pool, profile, "bk")
    _restart_migration(other, oapi, "migration:sink_after_snapshot")
    try:
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)
        assert r.returncode != 0
    finally:
        _restart_migration(other, oapi, None)
    assert inventory(oapi, other, pool, c) == CLEAN
    wait_for(lambda: frozen_left(stack, pool) == [], 30,
             what="the source to drop its read-only copies")
    assert (vol / "rootfs" / "root" / "marker").read_text() == "new"
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    assert exclusive_bytes(other.dir / "storage-pools" / pool / "containers" / c) < 1 << 20


def test_running_container_copies_and_refuses_a_live_move(api, oapi, other, worlds,
                                                          client):
    """A running container: the client asks a live copy (CRIU), refused with the reason
    as LXD without CRIU; ``--stateless`` copies as LXD's (the volume, then a final sync),
    the copy stopped, the source still running. A live move is refused; the source stays;
    ``move --stateless`` stops, moves and starts it again."""
    w = worlds
    c = w.create("run", start=True)
    try:
        lxc(client, "exec", f"src:{c}", "--", "sh", "-c", "echo live > /root/marker")
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)  # live, as LXD's
        assert r.returncode != 0 and "--stateless" in r.stderr, r.stderr
        assert oapi.get(f"/1.0/instances/{c}").status_code == 404
        lxc(client, "copy", "--stateless", f"src:{c}", f"dst:{c}")
        assert oapi.get(f"/1.0/instances/{c}").json()["metadata"]["status"] == "Stopped"
        vol = other.dir / "storage-pools" / w.pool / "containers" / c
        assert (vol / "rootfs" / "root" / "marker").read_text() == "live\n"
        assert api.get(f"/1.0/instances/{c}").json()["metadata"]["status"] == "Running"
        r = lxc(client, "move", f"src:{c}", f"dst:{c}-moved", check=False)
        assert r.returncode != 0 and "CRIU" in r.stderr, r.stderr
        assert api.get(f"/1.0/instances/{c}").json()["metadata"]["status"] == "Running"
        assert oapi.get(f"/1.0/instances/{c}-moved").status_code == 404
        # --stateless: the client stops it, moves it (a stopped copy), deletes the source
        # and starts the copy, as with LXD
        lxc(client, "move", "--stateless", f"src:{c}", f"dst:{c}-moved")
        assert api.get(f"/1.0/instances/{c}").status_code == 404
        assert oapi.get(f"/1.0/instances/{c}-moved").json()["metadata"]["status"] == "Running"
        out = lxc(client, "exec", f"dst:{c}-moved", "--", "cat", "/root/marker").stdout
        assert out.strip() == "live"
    finally:
        w.remove(c)


def test_copy_into_another_project(api, oapi, other, worlds, client):
    """``--target-project``: the copy lands in the target's project, with its snapshot."""
    w = worlds
    proj = f"{w.prefix}pj"
    r = oapi.post("/1.0/projects", json={"name": proj, "config": {
        "features.profiles": "false", "features.images": "false",
        "features.storage.volumes": "false"}})
    assert r.status_code == 200, r.text
    c = w.create("proj")
    snapshot(w, c, "j1")
    try:
        lxc(client, "copy", f"src:{c}", f"dst:{c}", "--target-project", proj)
        assert oapi.get(f"/1.0/instances/{c}").status_code == 404  # not in default
        r = oapi.get(f"/1.0/instances/{c}/snapshots?project={proj}")
        assert r.status_code == 200 and len(r.json()["metadata"]) == 1, r.text
    finally:
        r = oapi.delete(f"/1.0/instances/{c}?project={proj}")
        if r.status_code == 202:
            wait_op(oapi, r, ok=False)
        oapi.delete(f"/1.0/projects/{proj}")


# -- virtual machines -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vm_alias(api, oapi, worlds, libvirtd, vm_image):  # noqa: F811
    """The busybox VM image on the source (libvirtd is the host's, shared by both stacks:
    copies get other names, a domain is named after its instance)."""
    w = worlds
    fp = upload_split(api, *vm_image)
    alias = f"{w.prefix}-vm"
    assert api.post("/1.0/images/aliases", json={"name": alias, "target": fp}
                    ).status_code in (200, 201)
    try:
        yield alias
    finally:
        for side in (api, oapi):
            for inst in side.get("/1.0/instances?recursion=1").json()["metadata"]:
                if inst["name"].startswith(w.prefix) and inst["type"] == "virtual-machine":
                    r = side.put(f"/1.0/instances/{inst['name']}/state",
                                 json={"action": "stop", "force": True})
                    if r.status_code == 202:
                        wait_op(side, r, ok=False)
                    r = side.delete(f"/1.0/instances/{inst['name']}")
                    if r.status_code == 202:
                        wait_op(side, r, ok=False)
        api.delete(f"/1.0/images/aliases/{alias}")
        r = api.delete(f"/1.0/images/{fp}")
        if r.status_code == 202:
            wait_op(api, r, ok=False)


def vm_disk(stack: Any, pool: str, name: str, snap: str | None = None) -> Path:
    if snap:
        return (stack.dir / "storage-pools" / pool / "virtual-machines-snapshots" / name
                / snap / "root.qcow2")
    return stack.dir / "storage-pools" / pool / "virtual-machines" / name / "root.qcow2"


def qemu_io(disk: Path, cmd: str) -> None:
    ro = ["-r", "-U"] if cmd.startswith("read") else []  # a snapshot is read-only
    r = subprocess.run(["qemu-io", *ro, "-f", "qcow2", "-c", cmd, str(disk)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, \
        r.stdout + r.stderr


def same_disk(a: Path, b: Path) -> str:
    """"" when the two disks hold the same guest bytes, else what qemu-img says."""
    r = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)],
                       capture_output=True, text=True)
    return "" if r.returncode == 0 else r.stdout + r.stderr


def test_vm_copy_and_move_between_servers(api, stack, oapi, other, worlds, client,
                                          other_https, btrfs_pool, vm_alias):
    """A stopped VM with a snapshot: copied (dir pool) with its config tree by rsync and
    its disks as raw streams, both disks the same as the source's; then moved back
    (target to source, onto a btrfs pool): the copy goes, the moved VM starts."""
    w = worlds
    v = w.name("v")
    w.wait(api.post("/1.0/instances", json={
        "name": v, "type": "virtual-machine", "profiles": [w.profile],
        "source": {"type": "image", "alias": vm_alias}}))
    qemu_io(vm_disk(stack, w.pool, v), "write -P 0x11 32M 64k")
    snapshot(w, v, "v1")
    qemu_io(vm_disk(stack, w.pool, v), "write -P 0x22 32M 64k")

    lxc(client, "copy", f"src:{v}", f"dst:{v}-c")
    inst = oapi.get(f"/1.0/instances/{v}-c").json()["metadata"]
    assert inst["type"] == "virtual-machine" and inst["status"] == "Stopped"
    assert [s["name"] for s in oapi.get(f"/1.0/instances/{v}-c/snapshots?recursion=1")
            .json()["metadata"]] == ["v1"]
    copy, copy_snap = vm_disk(other, w.pool, f"{v}-c"), vm_disk(other, w.pool, f"{v}-c", "v1")
    qemu_io(copy, "read -P 0x22 32M 64k")
    qemu_io(copy_snap, "read -P 0x11 32M 64k")
    assert same_disk(copy, vm_disk(stack, w.pool, v)) == ""
    assert same_disk(copy_snap, vm_disk(stack, w.pool, v, "v1")) == ""
    config_tree = sorted(p.name for p in vm_disk(stack, w.pool, v).parent.iterdir()
                         if p.name not in ("root.qcow2", "rootfs.img"))
    assert config_tree and set(config_tree) <= {p.name for p in copy.parent.iterdir()}

    pool, _profile = btrfs_pool
    lxc(client, "move", f"dst:{v}-c", f"src:{v}-back", "--storage", pool)
    assert oapi.get(f"/1.0/instances/{v}-c").status_code == 404
    assert not copy.parent.exists()
    back = vm_disk(stack, pool, f"{v}-back")
    qemu_io(back, "read -P 0x22 32M 64k")
    qemu_io(vm_disk(stack, pool, f"{v}-back", "v1"), "read -P 0x11 32M 64k")
    r = api.put(f"/1.0/instances/{v}-back/state", json={"action": "start"})
    assert r.status_code == 202 and wait_op(api, r)["status"] == "Success"
    r = api.put(f"/1.0/instances/{v}-back/state", json={"action": "stop", "force": True})
    wait_op(api, r)


def test_running_vm_is_refused_and_leaves_nothing(api, stack, oapi, other, worlds, client,
                                                  vm_alias):
    """A running VM: refused (live, or --stateless: its disk is being written), 400 with
    the way out; nothing on the target, the VM still running."""
    w = worlds
    v = w.name("vr")
    w.wait(api.post("/1.0/instances", json={
        "name": v, "type": "virtual-machine", "profiles": [w.profile], "start": True,
        "source": {"type": "image", "alias": vm_alias}}))
    for extra in ([], ["--stateless"]):
        r = lxc(client, "copy", *extra, f"src:{v}", f"dst:{v}-c", check=False)
        assert r.returncode != 0 and "stop it" in r.stderr, r.stderr
        assert inventory(oapi, other, w.pool, f"{v}-c") == CLEAN
    assert api.get(f"/1.0/instances/{v}").json()["metadata"]["status"] == "Running"


def test_btrfs_send_with_lxd(lxd, api, stack, oapi, other, worlds, client, btrfs_pool):
    """btrfs pools on both sides with a real LXD 5.0: to LXD, LXD's target answers BTRFS
    and receives our send streams (its volume has a received UUID); back from LXD (a
    container it never started: no idmap), we answer BTRFS and the volume shares the
    snapshot's extents here. The copy starts in LXD with our content."""
    w = worlds
    pool, profile = btrfs_pool
    c, _vol = btrfs_instance(api, stack, w, pool, profile, "lb")
    lxc(client, "remote", "add", "lxd", f"unix://{lxd['LXD_DIR']}/unix.socket")
    lpool = f"{w.prefix}lb"
    lxc(client, "storage", "create", f"lxd:{lpool}", "btrfs", "size=1GiB")
    try:
        lxc(client, "profile", "create", f"lxd:{profile}")
        lxc(client, "profile", "device", "add", f"lxd:{profile}", "root", "disk", "path=/",
            f"pool={lpool}")
        lxc(client, "copy", f"src:{c}", f"lxd:{c}")
        lvol = Path(lxd["LXD_DIR"]) / "storage-pools" / lpool / "containers" / c
        show = subprocess.run(["btrfs", "subvolume", "show", str(lvol)],
                              capture_output=True, text=True).stdout
        assert re.search(r"Received UUID:\s+[0-9a-f]{8}-", show), show
        lxc(client, "copy", f"lxd:{c}", f"dst:{c}-back", "--storage", pool)
        target = other.dir / "storage-pools" / pool / "containers" / f"{c}-back"
        assert (target / "rootfs" / "root" / "marker").read_text() == "new"
        assert exclusive_bytes(target) < 1 << 20, "LXD's volume was not sent against b1"
        lxc(client, "start", f"lxd:{c}")
        out = lxc(client, "exec", f"lxd:{c}", "--", "cat", "/root/marker").stdout
        assert out.strip() == "new"
    finally:
        lxc(client, "delete", "--force", f"lxd:{c}", check=False)
        lxc(client, "profile", "delete", f"lxd:{profile}", check=False)
        lxc(client, "storage", "delete", f"lxd:{lpool}", check=False)


def test_btrfs_source_killed_mid_send_leaves_nothing(api, stack, oapi, other, worlds,
                                                     client, btrfs_pool):
    """The source's migration service dies after the snapshot's send stream, holding the
    read-only copies it sends from: its next start drops them (journaled); the target
    keeps nothing; the source is whole and copies again."""
    w = worlds
    pool, profile = btrfs_pool
    c, vol = btrfs_instance(api, stack, w, pool, profile, "bs")
    _restart_migration(stack, api, "migration:source_after_snapshot")
    try:
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", check=False)
        assert r.returncode != 0
        assert frozen_left(stack, pool), "the kill should have left the read-only copies"
        wait_for(lambda: inventory(oapi, other, pool, c) == CLEAN, 60,
                 what="the target to drop what it received")
    finally:
        _restart_migration(stack, api, None)
    wait_for(lambda: frozen_left(stack, pool) == [], 60,
             what="the restarted source to drop the read-only copies")
    assert (vol / "rootfs" / "root" / "marker").read_text() == "new"
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    assert exclusive_bytes(other.dir / "storage-pools" / pool / "containers" / c) < 1 << 20


def test_refresh_sends_what_changed(api, stack, oapi, other, worlds, client):
    """``lxc copy --refresh`` onto an existing copy: only the snapshot the target lacks
    comes (the one it has is left as it is, the one only it has is deleted, as LXD's),
    taken there in order, and the instance's
    tree is synced over the copy (a file only the copy had goes). A running copy is
    refused (400, stop it); the copy is still the refreshed one."""
    w = worlds
    c = w.create("rf")
    write_marker(w, c, "first")
    snapshot(w, c, "r1")
    lxc(client, "copy", f"src:{c}", f"dst:{c}")
    write_marker(w, c, "second")
    snapshot(w, c, "r2")
    write_marker(w, c, "now")
    pool = other.dir / "storage-pools" / w.pool
    target = pool / "containers" / c
    (target / "rootfs" / "root" / "stale").write_text("only on the copy")
    wait_op(oapi, oapi.post(f"/1.0/instances/{c}/snapshots", json={"name": "mine"}))
    r1 = next(pool.glob(f"*/{c}/r1")) / "rootfs" / "root" / "marker"
    before = r1.stat()

    lxc(client, "copy", f"src:{c}", f"dst:{c}", "--refresh")
    snaps = oapi.get(f"/1.0/instances/{c}/snapshots?recursion=1").json()["metadata"]
    assert [s["name"] for s in snaps] == ["r1", "r2"], [(s["name"], s["created_at"]) for s in snaps]
    r2 = next(pool.glob(f"*/{c}/r2"))
    assert (r2 / "rootfs" / "root" / "marker").read_text() == "second"
    assert not (r2 / "rootfs" / "root" / "stale").exists()
    assert (target / "rootfs" / "root" / "marker").read_text() == "now"
    assert not (target / "rootfs" / "root" / "stale").exists()
    after = r1.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert r1.read_text() == "first"

    r = oapi.put(f"/1.0/instances/{c}/state", json={"action": "start"})
    assert r.status_code == 202 and wait_op(oapi, r)["status"] == "Success"
    try:
        r = lxc(client, "copy", f"src:{c}", f"dst:{c}", "--refresh", check=False)
        assert r.returncode != 0 and "stop it" in r.stderr, r.stderr
    finally:
        r = oapi.put(f"/1.0/instances/{c}/state", json={"action": "stop", "force": True})
        wait_op(oapi, r)
    assert (target / "rootfs" / "root" / "marker").read_text() == "now"
