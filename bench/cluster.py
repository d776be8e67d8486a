"""`make bench-cluster`: issue 13's cluster figures.

- ``lxc list`` of ``--many`` (1000) instance records spread over 3 nodes, through
  ``GET /1.0/instances?recursion=1`` on one node's socket: that gateway asks every
  member's instance service for the records located on it, all at once, and joins the
  answers (services/gateway/routes/instances.py ``cluster_list``), so the figure is the
  real cluster path. Asked through node1 and through node3 (a list is the same from any
  node). Goal: 100 ms.
- cold move of the busybox container between nodes (goal 1 s): ``POST
  /1.0/instances/<name>?target=nodeK`` ``{"migration": true}`` (what ``lxc move c
  --target nodeK`` sends), waited for, the stopped container going node1 -> node2 ->
  node1...: the two members' migration services carry it, joined over the bus by the
  gateway (services/gateway/cluster_move.py); each sample is a whole move (transfer,
  import under a temporary name, delete of the source, rename).
- "VM live-migration downtime": median and p95 of libvirt's downtime over ``--vm-moves``
  live moves of a 128 MiB VM between two namespaced nodes (bench/vm_live_migration.py).

Three nodes (``CORRAL_CLUSTER=1``, ``node1``..``node3``, each ``corral-all`` with its own
``CORRAL_DIR`` and gateway, as ``make cluster-up`` runs them in ``CORRAL_MODE=single``)
share one nats-server, so they share the KV buckets as the nodes of a NATS cluster do
(tests/cluster_stack.py does the same with one process per service). No namespaces:
what is measured is the gateways and the instance services, not the links. The records
are stopped instances, made as bench/speed.py makes its big list (``POST
/1.0/instances``, eight at a time), here with ``?target=nodeK`` round robin, on a ``dir``
pool every node knows (no containers run). Everything lives in a temporary directory,
removed at the end.

Run: `make bench-cluster` or `.venv/bin/python -m bench.cluster [--many 1000] [--runs 50]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import UnixHTTPConnection, get, measure, table  # noqa: E402
from bench.instances import API, import_busybox  # noqa: E402
from tests.cluster_stack import _unmount_under  # noqa: E402
from tests.stack import NatsServer, Stack, wait_for  # noqa: E402

NODES = 3
GOAL_LIST_MS = 100.0
GOAL_MOVE_MS = 1000.0


def cold_moves(api: API, name: str, runs: int) -> list[float]:
    """``runs`` timed moves of ``name`` (stopped, on node1) between node1 and node2."""
    where = ["node1"]

    def move() -> None:
        target = "node2" if where[0] == "node1" else "node1"
        api.call("POST", f"/1.0/instances/{name}?target={target}",
                 {"name": name, "migration": True, "live": False})
        where[0] = target

    return measure(move, runs, warmup=1)


def start_node(base: Path, nats: NatsServer, name: str) -> Stack:
    # Production's custom-volume snapshot pass (every 10 s), not the test stacks' 1 s: with
    # 1000 records that pass's scans ran every second on each node, in every figure.
    stack = Stack(base / name, nats, CORRAL_CLUSTER="1", CORRAL_NODE=name,
                  CORRAL_LOG_LEVEL="warning", CORRAL_REQUEST_TIMEOUT="30",
                  CORRAL_SNAPSHOT_PRUNE_INTERVAL="10")
    for d in (stack.dir.parent, stack.dir):  # unprivileged roots traverse their parents
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(d.stat().st_mode | 0o011)
    stack.start("all")
    return stack


def make_pool(api: API, tag: str) -> None:
    """A dir pool on every member, as LXD makes one in a cluster: pending on each member
    (``?target=``), then created on all. A server that makes a pool cluster-wide at the
    first request answers the later ones "already exists": then it is made."""
    for path in [f"/1.0/storage-pools?target=node{k}" for k in range(1, NODES + 1)] + [
            "/1.0/storage-pools"]:
        try:
            api.call("POST", path, {"name": tag, "driver": "dir"})
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise


def setup(api: API, tag: str, workdir: Path) -> None:
    """A dir pool, a profile with its root disk, the busybox image under an alias."""
    make_pool(api, tag)
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag}}})
    import_busybox(api, workdir, alias=f"{tag}img")


def spread_records(sock: Path, names: list[str], tag: str) -> None:
    """``names`` as stopped instances, node ``i % 3 + 1`` for the i-th, eight at a time."""
    def make(chunk: list[tuple[int, str]]) -> None:
        api = API(sock)
        for i, n in chunk:
            api.call("POST", f"/1.0/instances?target=node{i % NODES + 1}",
                     {"name": n, "profiles": [tag],
                      "source": {"type": "image", "alias": f"{tag}img"}})
    items = list(enumerate(names))
    make(items[:NODES])  # one on each node first: its image volume is made once, alone
    items = items[NODES:]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(make, [items[i::8] for i in range(8)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--many", type=int, default=1000, help="instance records in the list")
    ap.add_argument("--runs", type=int, default=50, help="samples per figure")
    ap.add_argument("--move-runs", type=int, default=20, help="samples of the cold move")
    ap.add_argument("--vm-moves", type=int, default=6,
                    help="live moves of a VM between 2 namespaced nodes (0: skip)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py needs root (LXC, pools)")
    tag = "k" + uuid.uuid4().hex[:5]
    base = Path(tempfile.mkdtemp(prefix="corral-bench-cluster-"))
    nats = NatsServer(base / "nats", base / "node1")
    stacks: list[Stack] = []
    try:
        nats.start()
        stacks.append(start_node(base, nats, "node1"))
        wait_for(stacks[0].ready, 120, what="node1 to answer")  # it makes the buckets
        stacks += [start_node(base, nats, f"node{k}") for k in range(2, NODES + 1)]
        for s in stacks:
            wait_for(s.ready, 180, what=f"{s.dir.name} to answer")
        setup(API(stacks[0].socket), tag, base)
        for s in stacks[1:]:  # a node's storage service mounts the pools it knows at start
            s.stop_all()
            s.start("all")
        for s in stacks[1:]:
            wait_for(s.ready, 180, what=f"{s.dir.name} to answer again")
        t0 = time.monotonic()
        names = [f"{tag}m{i}" for i in range(args.many)]
        spread_records(stacks[0].socket, names, tag)
        made = time.monotonic() - t0
        rows = []
        for s in (stacks[0], stacks[-1]):
            conn = UnixHTTPConnection(str(s.socket))
            listed = get(conn, "/1.0/instances?recursion=1")["metadata"]
            per_node: dict[str, int] = {}
            for inst in listed:
                if inst["name"].startswith(tag):
                    per_node[inst["location"]] = per_node.get(inst["location"], 0) + 1
            if sum(per_node.values()) != args.many or len(per_node) != NODES:
                raise SystemExit(f"{s.dir.name}'s list is not the {args.many} records over "
                                 f"{NODES} nodes: {per_node}")
            rows.append((f"GET recursion=1, {args.many} over {NODES} nodes (via "
                         f"{s.dir.name})",
                         measure(lambda c=conn: get(c, "/1.0/instances?recursion=1"),
                                 args.runs, warmup=3)))
        mover = f"{tag}mv"
        api = API(stacks[0].socket)
        api.call("POST", "/1.0/instances?target=node1", {
            "name": mover, "profiles": [tag], "source": {"type": "image",
                                                         "alias": f"{tag}img"}})
        rows.append(("cold move of busybox between nodes (stopped)",
                     cold_moves(api, mover, args.move_runs)))
        table(f"Cluster ({NODES} nodes on one nats-server, corral-all each; records made "
              f"in {made:.0f} s)", rows,
              note=f"goals: the list <= {GOAL_LIST_MS:.0f} ms, the cold move <= "
                   f"{GOAL_MOVE_MS:.0f} ms")
    finally:
        for s in reversed(stacks):
            s.stop_all()
        nats.stop()
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)
    if args.vm_moves > 0:
        vm_live_migration_row(args.vm_moves)


def vm_live_migration_row(moves: int) -> None:
    """The "VM live-migration downtime" row: its own namespaced 2-node cluster (a libvirtd
    per node; libvirt will not migrate to itself), bench/vm_live_migration.py."""
    from bench import vm_live_migration

    try:
        rows = vm_live_migration.rows(moves)
    except Exception as exc:  # e.g. no libvirtd here: the other rows stand
        print(f"{vm_live_migration.ROW:<52} not measured: {exc}")
        return
    table("VM live migration (2 namespaced nodes, make cluster-up, libvirtd each)", rows,
          note="libvirt's own figures (each operation's live_migration metadata)")


if __name__ == "__main__":
    main()
