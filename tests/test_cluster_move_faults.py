"""A cold move between cluster members whose gateway is killed (SIGKILL) mid-move.

The gateway that runs ``POST /1.0/instances/<c>?target=node2`` journals each step
(services/gateway/move_journal.py) and dies at a fault point (shared/faults.py): once both
ends of the transfer run (back: the target never had it whole), after the transfer, after
the source's delete, before the rename (forward: the target has it whole). Started again,
that gateway ends the move: the instance exists once, under its name, at one location,
with its snapshot and data, started again after ``--stateless``; no temporary name, no
LXC directory left on either member, and the move's operation ended saying how.
(A VM's live move whose gateway dies after the send is in tests/test_vm_live_move.py,
on that module's namespaced nodes.)
"""

from __future__ import annotations

import json
import signal

import pytest

from .cluster_stack import two_node_fixtures
from .stack import wait_for
from .test_cluster_move import make, names, read_mark, snapshots, where
from .world import lxc

pytestmark = pytest.mark.timeout(900)


cluster, world = two_node_fixtures()


def restart_gateway(node, fault: str | None = None) -> None:
    node.stack.stop("gateway")
    env = node.stack.env
    node.stack.env = {**env, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        node.stack.start("gateway")
    finally:
        node.stack.env = env
    wait_for(node.stack.ready, 60, what=f"{node.name}'s gateway")


def leftovers(node, c: str) -> list[str]:
    """LXC directories of ``c`` or its temporary copies on ``node``."""
    base = node.stack.dir / "lxc"
    return sorted(p.name for p in base.iterdir() if p.name.startswith(c)) \
        if base.exists() else []


@pytest.mark.parametrize("point,forward,running", [
    ("cluster_move:transfer_started", False, False),
    ("cluster_move:after_transfer", True, False),
    ("cluster_move:after_delete", True, False),
    ("cluster_move:before_rename", True, False),
    ("cluster_move:before_rename", True, True),  # --stateless: started again on node2
])
def test_gateway_killed_mid_move(cluster, world, point, forward, running):
    (n1, n2), _ = cluster
    c = world.name(f"g{point.rsplit(':', 1)[1][:3]}{'r' if running else ''}")
    make(world, n1, c, "node1")  # node1 -> node2, asked of node1's gateway
    if running:
        lxc(n1.stack, "start", c)
    restart_gateway(n1, point)
    try:
        r = n1.api.post(f"/1.0/instances/{c}?target=node2",
                        json={"name": c, "migration": True, "live": False})
        assert r.status_code == 202, r.text
        op_id = r.json()["metadata"]["id"]
        proc = n1.stack.procs["gateway"]
        proc.wait(120)
        assert proc.returncode == -signal.SIGKILL, "the fault point was not reached"
    finally:
        restart_gateway(n1)

    def ended() -> dict | None:
        op = n2.api.get(f"/1.0/operations/{op_id}").json().get("metadata") or {}
        return op if "the move was finished" in (op.get("err") or "") else None

    wait_for(ended, 120, interval=0.5, what="the restarted gateway to end the move")
    op = ended()
    assert op["status"] == "Failure", op
    assert ("moved forward" if forward else "moved back") in op["err"], op
    status = "Running" if running else "Stopped"
    home, away = (n2, n1) if forward else (n1, n2)
    for node in (n1, n2):
        assert where(node, c) == (status, home.name), point
        assert not any("-moving-" in n for n in names(node))
    assert leftovers(home, c) == [c] and leftovers(away, c) == []
    assert snapshots(n1, c) == ["s0"]
    if not running:
        lxc(n1.stack, "start", c)
    assert read_mark(n1, c) == "second"
    lxc(n1.stack, "delete", c, "--force")
    for node in (n1, n2):
        assert c not in json.dumps(names(node))
