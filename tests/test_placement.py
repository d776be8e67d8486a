"""One API from any node: instances located on nodes, requests routed to them (issue 13).

Two nodes (``node1``, ``node2``: every service and a gateway each, their own CORRAL_DIR,
CORRAL_CLUSTER=1) share one nats-server, so they share the KV buckets as the nodes of a
NATS cluster do; their gateways write their member records (heartbeats). Through
the stock ``lxc`` of either node: ``--target``, LOCATION in lists, exec/stop/delete of
another node's instance, placement by room, bad targets, and a dead node's instances
listed as Error by the other.
"""

from __future__ import annotations

import json
import time

import pytest

from shared import subjects
from shared.bus import Bus
from shared.config import load_config
from shared.errors import CorralError
from shared.service import FORWARDED

from .cluster_stack import two_node_fixtures
from .stack import SERVICES, wait_for
from .world import lxc, wait_op

cluster, world = two_node_fixtures()


def create_on(world, node, tag: str, target: str | None = None, **body) -> str:
    """``POST /1.0/instances[?target=]`` through ``node``'s socket; the instance's name."""
    name = world.name(tag)
    op = wait_op(node.api, node.api.post(
        "/1.0/instances", params={"target": target} if target else None, json={
            "name": name, "source": {"type": "image", "alias": world.image},
            "profiles": [world.profile], **body}))
    if target:  # the operation ran there, and says so (LXD's operation location)
        assert op["location"] == target, op
    return name


def listing(node, **params) -> list[dict]:
    r = node.api.get("/1.0/instances", params={"recursion": 1, **params})
    assert r.status_code == 200, r.text
    return r.json()["metadata"]


def located(node, name: str) -> str:
    return {i["name"]: i["location"] for i in listing(node)}[name]


def test_launch_with_target_through_the_other_node(cluster, world):
    (n1, n2), _ = cluster
    # the image was uploaded through node1 to either node's image service: every image
    # service knows it (their caches follow each other's writes, shared/kv_follow.py)
    for _ in range(6):
        assert n2.api.get(f"/1.0/images/{world.fingerprint}").status_code == 200
        assert n2.api.get(f"/1.0/images/aliases/{world.image}").status_code == 200
    name = world.name("tgt")
    lxc(n1.stack, "launch", world.image, name, "-p", world.profile, "--target", "node2")
    # made on node2: its LXC directory, not node1's
    assert (n2.stack.dir / "lxc" / name).is_dir()
    assert not (n1.stack.dir / "lxc" / name).exists()
    for node in (n1, n2):  # the same list, with its location, from either node
        rows = json.loads(lxc(node.stack, "list", name, "--format", "json").stdout)
        assert [(r["name"], r["location"], r["status"]) for r in rows] == [
            (name, "node2", "Running")]
        table = lxc(node.stack, "list", name, "-c", "nsL", "--format", "csv").stdout
        assert table.strip() == f"{name},RUNNING,node2"
    # a request about it is served by node2 wherever it arrives
    out = lxc(n1.stack, "exec", name, "--", "cat", "/proc/self/cgroup").stdout
    assert out
    r = n1.api.get(f"/1.0/instances/{name}", params={"recursion": 1})
    assert r.json()["metadata"]["location"] == "node2"
    assert r.json()["metadata"]["state"]["pid"] > 0
    lxc(n1.stack, "stop", name, "--force")
    assert n2.api.get(f"/1.0/instances/{name}").json()["metadata"]["status"] == "Stopped"
    lxc(n1.stack, "delete", name)
    assert n2.api.get(f"/1.0/instances/{name}").status_code == 404
    assert not (n2.stack.dir / "lxc" / name).exists()


async def test_a_request_reaching_another_node_is_forwarded(cluster, world):
    """A client naming no node (the corral CLI, a hook) or the wrong one reaches node1's
    instance service: it forwards the request to node2, where the instance is; a request
    forwarded once is not forwarded again but refused (409), so a node never starts or
    purges another's instance. A node's list with a target is what is located there."""
    (n1, n2), _ = cluster
    name = create_on(world, n1, "own", "node2")
    bus = Bus(load_config(dir=n1.stack.dir, nats_url=n1.stack.nats.url,
                          nats_credentials=n1.stack.nats.admin), "tests")
    await bus.connect()
    try:
        with pytest.raises(CorralError) as err:
            await bus.request_raw(
                subjects.node("node1", "instance", "state_put"),
                {"name": name, "action": "start"}, headers={FORWARDED: "node9"})
        assert err.value.code == 409 and "located on 'node2'" in err.value.message
        for node in ("node1", None):  # node1's subject, then the cluster subject
            reply = await bus.request("instance", "get", {"name": name}, node=node)
            assert reply.metadata["location"] == "node2"
        reply = await bus.request("instance", "state_put", {"name": name, "action": "start"},
                                  node="node1")
        op = n1.api.get(f"/1.0/operations/{reply.operation['id']}/wait",
                        params={"timeout": 60}).json()["metadata"]
        assert op["status"] == "Success" and op["location"] == "node2", op
        ours = await bus.request("instance", "list", {"target": "node1"}, node="node1")
        theirs = await bus.request("instance", "list", {"target": "node2"}, node="node2")
        assert f"/1.0/instances/{name}" not in ours.metadata
        assert f"/1.0/instances/{name}" in theirs.metadata
    finally:
        await bus.close()
    wait_for(lambda: n2.api.get(f"/1.0/instances/{name}").json()["metadata"]["status"]
             == "Running", 30, what="started on node2")
    assert (n2.stack.dir / "lxc" / name).is_dir() and not (n1.stack.dir / "lxc" / name).exists()
    wait_op(n1.api, n1.api.put(f"/1.0/instances/{name}/state",
                               json={"action": "stop", "force": True}))


def counts(node) -> dict[str, int]:
    out = {"node1": 0, "node2": 0}
    for i in listing(node, **{"all-projects": "true"}):
        out[i["location"]] += 1
    return out


def test_placement_spreads_over_members(cluster, world):
    """Without a target, the online member with the fewest instances (counted from the
    records, through either node), so launches spread. (Free memory and CPUs break
    ties: tests/unit/test_placement_rank.py.)"""
    (n1, n2), _ = cluster
    c = counts(n1)
    for _ in range(abs(c["node1"] - c["node2"])):  # even, then one more on node2
        create_on(world, n1, "ev", "node1" if c["node1"] < c["node2"] else "node2")
    create_on(world, n1, "more", "node2")
    a = world.name("pa")
    lxc(n2.stack, "init", world.image, a, "-p", world.profile)
    assert located(n1, a) == "node1"
    assert (n1.stack.dir / "lxc" / a).is_dir()
    seen = set()
    for i, node in enumerate((n1, n2, n1, n2)):
        before = counts(node)
        name = world.name(f"pb{i}")
        lxc(node.stack, "init", world.image, name, "-p", world.profile)
        where = located(node, name)
        seen.add(where)
        assert before[where] == min(before.values()), (before, where)
    assert seen == {"node1", "node2"}
    c = counts(n2)
    assert abs(c["node1"] - c["node2"]) <= 1


def test_bad_target(cluster, world):
    (n1, _n2), beats = cluster
    name = world.name("bad")
    r = n1.api.post("/1.0/instances", params={"target": "node9"}, json={
        "name": name, "source": {"type": "image", "alias": world.image},
        "profiles": [world.profile]})
    assert r.status_code == 400, r.text
    assert "node9" in r.json()["error"] and "not a member" in r.json()["error"]
    # through the stock client too
    out = lxc(n1.stack, "init", world.image, name, "-p", world.profile, "--target",
              "node9", check=False)
    assert out.returncode != 0 and "not a member" in out.stderr
    # an offline member: 503, and nothing made
    beats.beat("node3")
    time.sleep(1)
    def create_on_node3():
        return n1.api.post("/1.0/instances", params={"target": "node3"}, json={
            "name": name, "source": {"type": "image", "alias": world.image},
            "profiles": [world.profile]})

    # online but running no instance service: 503 naming it
    r = create_on_node3()
    assert r.status_code == 503 and "'node3', chosen for the instance, is not answering" \
        in r.json()["error"], r.text
    beats.silence("node3")
    wait_for(lambda: "offline" in create_on_node3().json()["error"], 15,
             what="node3 offline")
    r = create_on_node3()
    assert r.status_code == 503, r.text
    assert n1.api.get(f"/1.0/instances/{name}").status_code == 404


def test_scheduler_instance_and_group_targets(cluster, world):
    """LXD's ``scheduler.instance``: a ``manual`` or ``group`` member is never chosen by
    placement though it has the fewest instances; ``--target @group`` chooses within the
    group (node3 here runs nothing, so being chosen shows as its 503)."""
    (n1, _n2), beats = cluster

    tags = iter(range(100))

    def launch(target: str | None = None):
        name = world.name(f"sch{next(tags)}")
        return name, n1.api.post("/1.0/instances", params={"target": target} if target
                                 else None, json={
                                     "name": name, "profiles": [world.profile],
                                     "source": {"type": "image", "alias": world.image}})

    try:
        for mode in ("manual", "group"):
            beats.beat("node3", config={"scheduler.instance": mode}, groups=["g3"])
            time.sleep(1)
            name, r = launch()
            wait_op(n1.api, r)
            assert located(n1, name) in ("node1", "node2")
        name, r = launch("@g3")  # the group's only member: chosen (and it runs nothing)
        assert r.status_code == 503 and "'node3', chosen for the instance" in \
            r.json()["error"], r.text
        assert n1.api.get(f"/1.0/instances/{name}").status_code == 404
        _name, r = launch("@nogroup")
        assert r.status_code == 400 and "'nogroup' has no member" in r.json()["error"]
        beats.beat("node3", config={"scheduler.instance": "manual"}, groups=["g3"])
        time.sleep(1)
        _name, r = launch("@g3")  # manual: not even within its group
        assert r.status_code == 503 and "No cluster member in cluster group 'g3'" in \
            r.json()["error"], r.text
        # a made-up member with room and the default scheduler is chosen (proof the
        # two above were skipped for their scheduler, not for being made up)
        beats.beat("node3")
        time.sleep(1)
        _name, r = launch()
        assert r.status_code == 503 and "'node3', chosen" in r.json()["error"], r.text
    finally:
        beats.silence("node3")
        time.sleep(3.5)  # offline again for the tests after this one
    # a real member set to manual with the stock client (`lxc cluster set`, kept in its
    # member record): launches without a target all go to the other one, though it has
    # more instances
    c = counts(n1)
    for i in range(c["node2"] - c["node1"] + 3):
        create_on(world, n1, f"heavy{i}", "node1")
    lxc(n1.stack, "cluster", "set", "node2", "scheduler.instance", "manual")
    try:
        wait_for(lambda: lxc(n1.stack, "cluster", "get", "node2", "scheduler.instance")
                 .stdout.strip() == "manual", 15, what="node2 manual")
        for _ in range(2):
            name, r = launch()
            wait_op(n1.api, r)
            assert located(n1, name) == "node1"
    finally:
        lxc(n1.stack, "cluster", "unset", "node2", "scheduler.instance")


def test_list_every_recursion_from_any_node(cluster, world):
    """recursion=0 and =2 from a cluster node: every instance, state from its node."""
    (n1, n2), _ = cluster
    a = create_on(world, n1, "r1", "node1", start=True)
    b = create_on(world, n1, "r2", "node2", start=True)
    urls = n2.api.get("/1.0/instances").json()["metadata"]
    assert f"/1.0/instances/{a}" in urls and f"/1.0/instances/{b}" in urls
    full = {i["name"]: i for i in listing(n1, recursion=2)}
    assert full[a]["location"] == "node1" and full[b]["location"] == "node2"
    assert full[a]["state"]["pid"] > 0 and full[b]["state"]["pid"] > 0
    for n in (a, b):
        wait_op(n1.api, n1.api.put(f"/1.0/instances/{n}/state",
                                   json={"action": "stop", "force": True}))


def test_dead_node_instances_listed_as_error(cluster, world):
    """Last: node2's processes are killed; node1 lists node2's instances with status
    Error and location node2 (not a 503 for the whole list), its own as usual."""
    (n1, n2), _ = cluster
    mine = create_on(world, n2, "alive", "node1")
    theirs = create_on(world, n1, "dead", "node2")
    c = counts(n1)
    for i in range(c["node2"] - c["node1"] + 1):  # node1 has more: placement wants node2
        create_on(world, n1, f"fill{i}", "node1")
    for proc in n2.stack.procs.values():
        proc.kill()
    for proc in n2.stack.procs.values():
        proc.wait(10)
    n2.stack.procs.clear()
    rows = {i["name"]: i for i in listing(n1)}
    assert rows[theirs]["status"] == "Error" and rows[theirs]["location"] == "node2"
    assert rows[mine]["status"] == "Stopped" and rows[mine]["location"] == "node1"
    time.sleep(3.5)  # past the offline threshold: not even asked
    rows = {i["name"]: i for i in listing(n1)}
    assert rows[theirs]["status"] == "Error"
    # placement skips an offline member, though it has fewer instances
    assert located(n1, create_on(world, n1, "while")) == "node1"
    table = lxc(n1.stack, "list", theirs, "-c", "nsL", "--format", "csv").stdout
    assert table.strip() == f"{theirs},ERROR,node2"
    # a request about it says where it is and that that node does not answer
    r = n1.api.get(f"/1.0/instances/{theirs}")
    assert r.status_code == 503 and "node2" in r.json()["error"]
    # bring node2 back for the world's cleanup
    for svc in (*SERVICES, "gateway"):
        n2.stack.start(svc)
    wait_for(n2.stack.ready, 60, what="node2 back")
    wait_for(lambda: {i["name"]: i["status"] for i in listing(n1)}[theirs] == "Stopped", 30,
             what="node2's instance listed as Stopped again")
    assert located(n1, theirs) == "node2"
