"""Cold move and copy between cluster members with the stock client (issue 13).

Two nodes on one nats-server (tests/cluster_stack.py), each running every service and a
gateway. ``lxc move c --target node2`` and ``lxc copy c c2 --target node1``: the migration
services of both members carry the instance (snapshots included), joined over the bus by
the gateway that got the request; the instance keeps its name, its LOCATION changes as
every node sees it, it starts on its new member, and the source member keeps nothing.
LXD's refusals (running without --stateless, unknown, offline or same target, a copy's
name taken), and a migration service killed mid-move (shared/faults.py) on either side:
the source stays whole, the target keeps nothing.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time

import pytest

from .cluster_stack import two_node_fixtures
from .stack import wait_for
from .world import lxc, wait_op

pytestmark = pytest.mark.timeout(900)


cluster, world = two_node_fixtures()


@pytest.fixture(scope="module")
def bworld(cluster, world):
    """The world's image on a btrfs pool (a loop file per member) and its profile; the
    other members' storage services are started again to mount it (as node_world)."""
    nodes, _beats = cluster
    api = nodes[0].api
    pool, profile = world.name("bp"), world.name("bpr")
    r = api.post("/1.0/storage-pools", json={"name": pool, "driver": "btrfs",
                                             "config": {"size": "768MiB"}})
    assert r.status_code in (200, 202), r.text
    if r.status_code == 202:
        wait_op(api, r)
    for node in nodes[1:]:
        node.stack.stop("storage")
        node.stack.start("storage")
        wait_for(node.stack.ready, 60, what=f"{node.name}'s storage service")
    r = api.post("/1.0/profiles", json={"name": profile, "devices": {
        "root": {"type": "disk", "path": "/", "pool": pool}}})
    assert r.status_code == 200, r.text
    yield dataclasses.replace(world, pool=pool, profile=profile)
    api.delete(f"/1.0/profiles/{profile}")
    r = api.delete(f"/1.0/storage-pools/{pool}")
    if r.status_code == 202:
        wait_op(api, r, ok=False)


def row(node, name: str) -> dict:
    rows = json.loads(lxc(node.stack, "list", name, "--format", "json").stdout)
    rows = [r for r in rows if r["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def where(node, name: str) -> tuple[str, str]:
    r = row(node, name)
    return r["status"], r["location"]


def names(node) -> list[str]:
    return [r["name"] for r in json.loads(lxc(node.stack, "list", "--format",
                                              "json").stdout)]


def snapshots(node, name: str) -> list[str]:
    out = lxc(node.stack, "query", f"/1.0/instances/{name}/snapshots").stdout
    return sorted(u.rsplit("/", 1)[-1] for u in json.loads(out))


def make(world, node, name: str, target: str) -> None:
    """A stopped container on ``target`` with a file in a snapshot and another after it."""
    lxc(node.stack, "launch", world.image, name, "-p", world.profile, "--target", target)
    lxc(node.stack, "exec", name, "--", "sh", "-c", "echo first > /root/mark")
    lxc(node.stack, "snapshot", name, "s0")
    lxc(node.stack, "exec", name, "--", "sh", "-c", "echo second > /root/mark")
    lxc(node.stack, "stop", name, "--force")


def read_mark(node, name: str) -> str:
    return lxc(node.stack, "exec", name, "--", "cat", "/root/mark").stdout.strip()


def test_move_stopped_with_snapshots(cluster, world):
    (n1, n2), _ = cluster
    c = world.name("mv")
    make(world, n1, c, "node1")
    out = lxc(n2.stack, "move", c, "--target", "node2")  # asked of the other member
    assert out.returncode == 0, out.stderr
    for node in (n1, n2):  # the same answer from every member
        assert where(node, c) == ("Stopped", "node2")
        assert not any("-moving-" in n for n in names(node))
    assert snapshots(n1, c) == ["s0"]
    assert not world.lxc_dir(c).exists() and not (n1.stack.dir / "lxc" / c).exists()
    assert (n2.stack.dir / "lxc" / c).is_dir()
    lxc(n1.stack, "start", c)
    assert where(n1, c) == ("Running", "node2")
    assert read_mark(n2, c) == "second"
    lxc(n2.stack, "stop", c, "--force")
    lxc(n1.stack, "restore", c, "s0")  # the snapshot's content came along
    lxc(n1.stack, "start", c)
    assert read_mark(n2, c) == "first"
    lxc(n1.stack, "delete", c, "--force")


def test_move_btrfs(cluster, bworld):
    (n1, n2), _ = cluster
    c = bworld.name("bmv")
    make(bworld, n2, c, "node2")
    lxc(n1.stack, "move", c, "--target", "node1")
    for node in (n1, n2):
        assert where(node, c) == ("Stopped", "node1")
    assert snapshots(n2, c) == ["s0"]
    pool = json.loads(lxc(n1.stack, "query", f"/1.0/storage-pools/{bworld.pool}/volumes"
                          ).stdout)
    assert f"/1.0/storage-pools/{bworld.pool}/volumes/container/{c}" in pool
    assert not (n2.stack.dir / "lxc" / c).exists()
    lxc(n2.stack, "restore", c, "s0")
    lxc(n2.stack, "start", c)
    assert read_mark(n1, c) == "first"
    lxc(n1.stack, "delete", c, "--force")


def test_move_through_rest(cluster, world):
    """The REST shape: 202 and an operation whose metadata shows the transfer's progress
    under the instance's name; LXD's 400s answered at once, before any operation."""
    (n1, n2), _ = cluster
    c = world.name("rest")
    lxc(n1.stack, "init", world.image, c, "-p", world.profile, "--target", "node1")
    r = n2.api.post(f"/1.0/instances/{c}?target=node2",
                    json={"name": c, "migration": True, "live": False})
    op = wait_op(n2.api, r)
    assert op["description"] == "Migrating instance", op
    assert op["metadata"]["fs_progress"].startswith(f"{c}: "), op["metadata"]
    assert where(n1, c) == ("Stopped", "node2")
    r = n1.api.post(f"/1.0/instances/{c}?target=node2", json={"migration": True})
    assert r.status_code == 400 and "different" in r.json()["error"], r.text
    r = n1.api.post(f"/1.0/instances/{c}?target=node1",
                    json={"name": world.name("other"), "migration": True})
    assert r.status_code == 400 and "rename" in r.json()["error"], r.text
    lxc(n1.stack, "delete", c)


def test_move_running(cluster, world):
    (n1, n2), _ = cluster
    c = world.name("run")
    lxc(n1.stack, "launch", world.image, c, "-p", world.profile, "--target", "node2")
    refused = lxc(n1.stack, "move", c, "--target", "node1", check=False)
    assert refused.returncode != 0
    assert "CRIU" in refused.stderr and "--stateless" in refused.stderr, refused.stderr
    assert where(n1, c) == ("Running", "node2")  # untouched
    lxc(n1.stack, "move", c, "--target", "node1", "--stateless")
    for node in (n1, n2):
        assert where(node, c) == ("Running", "node1")
    assert not (n2.stack.dir / "lxc" / c).exists()
    lxc(n1.stack, "delete", c, "--force")


def test_move_refusals(cluster, world):
    (n1, n2), beats = cluster
    c = world.name("ref")
    lxc(n1.stack, "init", world.image, c, "-p", world.profile, "--target", "node1")
    bad = lxc(n1.stack, "move", c, "--target", "node9", check=False)
    assert bad.returncode != 0 and "not a member" in bad.stderr, bad.stderr
    same = lxc(n2.stack, "move", c, "--target", "node1", check=False)
    assert same.returncode != 0 and "different" in same.stderr, same.stderr
    gone = lxc(n1.stack, "move", world.name("nope"), "--target", "node2", check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr.lower(), gone.stderr
    # a member that was online and stopped answering
    ghost = world.name("ghost")
    beats.beat(ghost)
    wait_for(lambda: ghost in lxc(n1.stack, "cluster", "list").stdout, 20,
             what="the made-up member to show")
    beats.silence(ghost)
    wait_for(lambda: "OFFLINE" in lxc(n1.stack, "cluster", "list", "--format",
                                      "csv").stdout.upper(), 30, what="it to go offline")
    off = lxc(n1.stack, "move", c, "--target", ghost, check=False)
    assert off.returncode != 0 and "offline" in off.stderr.lower(), off.stderr
    for node in (n1, n2):
        assert where(node, c) == ("Stopped", "node1")
    lxc(n1.stack, "delete", c)


def test_copy_to_other_member(cluster, world):
    (n1, n2), _ = cluster
    c, c2 = world.name("cp"), world.name("cp2")
    make(world, n1, c, "node2")
    lxc(n1.stack, "copy", c, c2, "--target", "node1")
    for node in (n1, n2):
        assert where(node, c) == ("Stopped", "node2")
        assert where(node, c2) == ("Stopped", "node1")
    assert snapshots(n2, c2) == ["s0"]
    lxc(n2.stack, "start", c2)
    assert read_mark(n1, c2) == "second"
    taken = lxc(n1.stack, "copy", c, c2, "--target", "node1", check=False)
    assert taken.returncode != 0 and "already exists" in taken.stderr, taken.stderr
    only = world.name("cpo")
    lxc(n2.stack, "copy", c, only, "--target", "node1", "--instance-only")
    assert snapshots(n1, only) == [] and where(n2, only) == ("Stopped", "node1")
    for name in (c, c2, only):
        lxc(n1.stack, "delete", name, "--force")


def test_copy_of_a_running_container(cluster, world):
    """The stock client asks a live copy of a running container; across members it is
    copied as it runs (the volume twice, the last pass final, as LXD's stateless copy):
    the copy is whole and stopped, the source still runs where it was."""
    (n1, n2), _ = cluster
    c, c2 = world.name("rc"), world.name("rc2")
    lxc(n1.stack, "launch", world.image, c, "-p", world.profile, "--target", "node1")
    lxc(n1.stack, "exec", c, "--", "sh", "-c", "echo live > /root/mark")
    lxc(n2.stack, "copy", c, c2, "--target", "node2")
    assert where(n1, c) == ("Running", "node1")
    assert where(n1, c2) == ("Stopped", "node2")
    lxc(n1.stack, "start", c2)
    assert read_mark(n2, c2) == "live"
    for name in (c, c2):
        lxc(n1.stack, "delete", name, "--force")


def restart(node, name: str, fault: str | None = None) -> None:
    """Start ``name`` of ``node`` again (with ``CORRAL_FAULT``), waited for: until its log
    says it started once more (it answers from then on)."""
    log = node.stack.log_path(name)

    def starts() -> int:
        return log.read_text(errors="replace").count("service started")

    before = starts()
    node.stack.stop(name)
    env = node.stack.env
    node.stack.env = {**env, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        node.stack.start(name)
    finally:
        node.stack.env = env
    wait_for(lambda: starts() > before, 60, what=f"{node.name}'s {name} service")


@pytest.mark.parametrize("side,point", [
    ("target", "migration:sink_after_snapshot"),
    ("source", "migration:source_after_snapshot"),
])
def test_migration_killed_mid_move(cluster, world, side, point):
    (n1, n2), _ = cluster
    c = world.name(f"k{side[0]}")
    make(world, n1, c, "node1")  # node1 -> node2
    victim = n2 if side == "target" else n1
    restart(victim, "migration", point)
    try:
        started = time.monotonic()
        out = lxc(n1.stack, "move", c, "--target", "node2", check=False, timeout=300)
        assert out.returncode != 0, out.stdout
        assert "fail" in out.stderr.lower(), out.stderr
        proc = victim.stack.procs["migration"]
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, "the fault point was not reached"
        assert time.monotonic() - started < 120
    finally:
        restart(victim, "migration")
    for node in (n1, n2):  # the source whole, nothing on the target
        assert where(node, c) == ("Stopped", "node1")
        assert not any("-moving-" in n for n in names(node))
    assert snapshots(n1, c) == ["s0"]
    assert not any(p.name.startswith(c) for p in (n2.stack.dir / "lxc").iterdir())
    staging = n2.stack.dir / "migration"
    assert not staging.exists() or not any(staging.iterdir())
    lxc(n1.stack, "start", c)
    assert read_mark(n1, c) == "second"
    lxc(n1.stack, "delete", c, "--force")
