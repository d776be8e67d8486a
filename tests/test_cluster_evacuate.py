"""``lxc cluster evacuate`` / ``lxc cluster restore`` with the stock client (issue 13).

Two nodes on one nats-server (tests/cluster_stack.py), each running every service and a
gateway. node2 holds a running and a stopped instance: evacuating it (through node1's
socket) marks it EVACUATED, stops the running one and keeps launches off it; restoring it
brings it back ONLINE and starts only what the evacuation stopped. LXD's errors for an
unknown member, an evacuate of an evacuated member and a restore of one not evacuated.
"""

from __future__ import annotations

import json

from shared.bus import Bus
from shared.config import load_config
from shared.state import Store, key

from .cluster_stack import two_node_fixtures
from .world import lxc, wait_op

cluster, world = two_node_fixtures()


def members(node) -> dict[str, str]:
    rows = json.loads(lxc(node.stack, "cluster", "list", "--format", "json").stdout)
    return {r["server_name"]: r["status"] for r in rows}


def status(node, name: str) -> tuple[str, str]:
    rows = json.loads(lxc(node.stack, "list", name, "--format", "json").stdout)
    assert len(rows) == 1, rows
    return rows[0]["status"], rows[0]["location"]


def test_evacuate_then_restore(cluster, world):
    (n1, n2), _ = cluster
    running, stopped = world.name("run"), world.name("stp")
    for name, verb in ((running, "launch"), (stopped, "init")):
        # a short clean-shutdown window: busybox's init may ignore the request
        lxc(n1.stack, verb, world.image, name, "-p", world.profile, "--target", "node2",
            "-c", "boot.host_shutdown_timeout=3", "-c", "cluster.evacuate=stop")
    assert status(n1, running) == ("Running", "node2")
    assert status(n1, stopped) == ("Stopped", "node2")
    # node1 holds more instances than node2: placement would choose node2 but for the
    # evacuation
    for i in range(3):
        lxc(n1.stack, "init", world.image, world.name(f"fill{i}"), "-p", world.profile,
            "--target", "node1")

    out = lxc(n1.stack, "cluster", "evacuate", "node2", "--force")
    assert out.returncode == 0, out.stderr
    for node in (n1, n2):  # the same state from either node, LXD's shape
        assert members(node) == {"node1": "Online", "node2": "Evacuated"}
        show = lxc(node.stack, "cluster", "show", "node2").stdout
        assert "Unavailable due to maintenance" in show
    table = lxc(n1.stack, "cluster", "list", "--format", "csv").stdout
    assert "node2" in table and "EVACUATED" in table, table
    assert status(n2, running) == ("Stopped", "node2")  # stopped, still there
    assert status(n2, stopped) == ("Stopped", "node2")
    assert (n2.stack.dir / "lxc" / running).is_dir()

    # a launch without a target goes elsewhere, through either node; --target refused
    for node in (n1, n2):
        other = world.name(f"else{node.name}")
        lxc(node.stack, "init", world.image, other, "-p", world.profile)
        assert status(n1, other) == ("Stopped", "node1")
    refused = lxc(n1.stack, "init", world.image, world.name("tg"), "-p", world.profile,
                  "--target", "node2", check=False)
    assert refused.returncode != 0 and "evacuated" in refused.stderr, refused.stderr

    again = lxc(n1.stack, "cluster", "evacuate", "node2", "--force", check=False)
    assert again.returncode != 0 and "already evacuated" in again.stderr, again.stderr

    out = lxc(n2.stack, "cluster", "restore", "node2", "--force")
    assert members(n1) == {"node1": "Online", "node2": "Online"}
    assert status(n1, running) == ("Running", "node2")
    assert status(n1, stopped) == ("Stopped", "node2")  # the user stopped it: stays so
    again = lxc(n1.stack, "cluster", "restore", "node2", "--force", check=False)
    assert again.returncode != 0 and "already restored" in again.stderr, again.stderr
    # placement may choose node2 again: --target is accepted
    back = world.name("back")
    lxc(n1.stack, "init", world.image, back, "-p", world.profile, "--target", "node2")
    assert status(n1, back) == ("Stopped", "node2")
    lxc(n1.stack, "stop", running, "--force")


def test_evacuate_migrates_and_restore_brings_back(cluster, world):
    """``cluster.evacuate`` auto (the default) and ``mode: migrate``: each instance moves to
    the other member (cold: a running one is stopped, moved, started there), carrying
    LXD's ``volatile.evacuate.origin``; restore moves them back, removes the key, and the
    running one runs again on its member. The operation names what moved where."""
    (n1, n2), _ = cluster
    run, stp = world.name("mrun"), world.name("mstp")
    lxc(n1.stack, "launch", world.image, run, "-p", world.profile, "--target", "node2",
        "-c", "boot.host_shutdown_timeout=3")
    lxc(n1.stack, "exec", run, "--", "sh", "-c", "echo here > /root/mark")
    lxc(n1.stack, "snapshot", run, "s0")
    lxc(n1.stack, "init", world.image, stp, "-p", world.profile, "--target", "node2",
        "-c", "cluster.evacuate=migrate")
    r = n1.api.post("/1.0/cluster/members/node2/state", json={"action": "evacuate"})
    op = wait_op(n1.api, r)
    assert op["description"] == "Evacuating cluster member"
    md = op["metadata"]
    moved = md["evacuation_moved"]  # (with what earlier tests left on node2)
    assert moved[f"default/{run}"] == "node1" and moved[f"default/{stp}"] == "node1", md
    assert md["evacuation_stopped"] == [] and "evacuation_not_moved" not in md, md
    for node in (n1, n2):
        assert status(node, run) == ("Running", "node1")
        assert status(node, stp) == ("Stopped", "node1")
    assert not (n2.stack.dir / "lxc" / run).exists()
    cfg = lxc(n1.stack, "config", "get", run, "volatile.evacuate.origin").stdout.strip()
    assert cfg == "node2"
    assert lxc(n2.stack, "exec", run, "--", "cat", "/root/mark").stdout.strip() == "here"

    op = wait_op(n2.api, n2.api.post("/1.0/cluster/members/node2/state",
                                     json={"action": "restore"}))
    assert op["description"] == "Restoring cluster member"
    returned = op["metadata"]["evacuation_returned"]
    assert f"default/{run}" in returned and f"default/{stp}" in returned, op
    for node in (n1, n2):
        assert status(node, run) == ("Running", "node2")
        assert status(node, stp) == ("Stopped", "node2")
    assert lxc(n1.stack, "config", "get", run, "volatile.evacuate.origin").stdout.strip() == ""
    snaps = lxc(n1.stack, "query", f"/1.0/instances/{run}/snapshots").stdout
    assert f"/1.0/instances/{run}/snapshots/s0" in snaps
    assert not (n1.stack.dir / "lxc" / run).exists()
    for name in (run, stp):
        lxc(n1.stack, "delete", name, "--force")


def test_operation_says_what_was_not_moved(cluster, world):
    """``mode: stop`` stops in place whatever the instance says; an ``auto`` instance
    with a device that cannot leave its member (a disk from the host) is stopped in place
    and named in ``evacuation_not_moved`` with the reason."""
    (n1, n2), _ = cluster
    name, pinned = world.name("op"), world.name("pin")
    lxc(n1.stack, "launch", world.image, name, "-p", world.profile, "--target", "node2",
        "-c", "boot.host_shutdown_timeout=3", "-c", "cluster.evacuate=migrate")
    r = n1.api.post("/1.0/cluster/members/node2/state",
                    json={"action": "evacuate", "mode": "stop"})
    op = wait_op(n1.api, r)
    md = op["metadata"]
    assert md["evacuation_stopped"] == [f"default/{name}"], md
    assert status(n2, name) == ("Stopped", "node2")
    op = wait_op(n2.api, n2.api.post("/1.0/cluster/members/node2/state",
                                     json={"action": "restore"}))
    assert op["metadata"]["evacuation_started"] == [f"default/{name}"], op
    assert status(n1, name) == ("Running", "node2")
    lxc(n1.stack, "delete", name, "--force")

    lxc(n1.stack, "launch", world.image, pinned, "-p", world.profile, "--target", "node2",
        "-c", "boot.host_shutdown_timeout=3")
    lxc(n1.stack, "config", "device", "add", pinned, "hostdir", "disk", "source=/srv",
        "path=/mnt/srv")
    op = wait_op(n1.api, n1.api.post("/1.0/cluster/members/node2/state",
                                     json={"action": "evacuate"}))
    md = op["metadata"]
    assert "hostdir" in md["evacuation_not_moved"][f"default/{pinned}"], md
    assert md["evacuation_stopped"] == [f"default/{pinned}"], md
    assert status(n1, pinned) == ("Stopped", "node2")
    lxc(n1.stack, "cluster", "restore", "node2", "--force")
    assert status(n1, pinned) == ("Running", "node2")
    lxc(n1.stack, "delete", pinned, "--force")


def test_bad_input(cluster, world):
    (n1, _n2), _ = cluster
    for action in ("evacuate", "restore"):
        out = lxc(n1.stack, "cluster", action, "node9", "--force", check=False)
        assert out.returncode != 0 and "Cluster member not found" in out.stderr, out.stderr
    r = n1.api.post("/1.0/cluster/members/node2/state", json={"action": "drain"})
    assert r.status_code == 400 and "Unknown action" in r.json()["error"], r.text
    r = n1.api.post("/1.0/cluster/members/node2/state",
                    json={"action": "evacuate", "mode": "teleport"})
    assert r.status_code == 400 and "Invalid evacuation mode" in r.json()["error"], r.text
    r = n1.api.post("/1.0/cluster/members/node9/state", json={"action": "evacuate"})
    assert r.status_code == 404, r.text
    out = lxc(n1.stack, "init", world.image, world.name("bad"), "-p", world.profile,
              "-c", "cluster.evacuate=teleport", check=False)
    assert out.returncode != 0 and "cluster.evacuate" in out.stderr, out.stderr
    # nothing of it left the member evacuated
    assert members(n1) == {"node1": "Online", "node2": "Online"}


async def test_an_instance_failing_to_stop_does_not_stop_the_others(cluster, world):
    """A record located on node2, said Running, of a type no driver takes (a copy of a
    real record under another name and type: whether libvirtd runs on this host does not
    matter, as it did for the VM record this was) fails to stop; the real instance after it
    is still stopped, the operation fails naming the ghost, the member stays evacuated
    and restore starts the one that was stopped."""
    (n1, n2), _ = cluster
    real = world.name("zreal")
    lxc(n1.stack, "launch", world.image, real, "-p", world.profile, "--target", "node2",
        "-c", "boot.host_shutdown_timeout=3", "-c", "cluster.evacuate=stop")
    ghost = world.name("aghost")  # sorts first: its failure comes before the real stop
    bus = Bus(load_config(dir=n1.stack.dir, nats_url=n1.stack.nats.url,
                          nats_credentials=n1.stack.nats.admin), "tests")
    await bus.connect()
    store = await Store(bus, "instances").open()
    try:
        rec, _rev = await store.require(key("default", real), "Instance")
        await store.put(key("default", ghost), {**rec, "name": ghost, "status": "Running",
                                                 "type": "no-such-type"})
        r = n1.api.post("/1.0/cluster/members/node2/state", json={"action": "evacuate"})
        op = wait_op(n1.api, r, ok=False)
    finally:
        await store.delete(key("default", ghost))
        await bus.close()
    assert op["status"] == "Failure", op["metadata"]
    assert f"default/{ghost}" in op["err"] and "Failed to stop 1 instance" in op["err"], op
    assert list(op["metadata"]["evacuation_failed"]) == [f"default/{ghost}"], op
    assert op["metadata"]["evacuation_stopped"] == [f"default/{real}"], op
    assert status(n1, real) == ("Stopped", "node2")
    assert members(n1)["node2"] == "Evacuated"
    lxc(n1.stack, "cluster", "restore", "node2", "--force")
    assert status(n1, real) == ("Running", "node2")
    lxc(n1.stack, "stop", real, "--force")
