"""The "VM live-migration downtime" row of ``make bench-cluster`` (issue 13).

Why its own cluster: a live migration needs a libvirtd per node, and libvirt refuses to
migrate to the daemon it runs under, so this needs ``make cluster-up``'s namespaced nodes
(each with its own libvirtd, hostname and host UUID), not bench/cluster.py's nodes on one
host. Two nodes with a unique prefix in a temporary CORRAL_DIR, the busybox VM image, one
128 MiB VM (TCG) moved live back and forth ``moves`` times through
``POST /1.0/instances/<name>?target=`` (what ``lxc move --target`` sends). Each move's
figures are libvirt's own (the operation's ``live_migration`` metadata): ``downtime_ms``
(the guest paused) and ``total_time_ms``. Everything is removed at the end.

Run alone: ``.venv/bin/python -m bench.vm_live_migration [--moves 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402

KERNEL_CACHE = Path("/var/cache/corral-test/vm-kernel")
ROW = "VM live-migration downtime (128 MiB, TCG)"


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    r = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}...: {r.stderr.strip()[-800:]}")
    return r.stdout


def measure_moves(moves: int = 6) -> tuple[list[float], list[float]]:
    """(downtimes, total times) in ms of ``moves`` live moves of one small VM."""
    from shared.image.build_vm import build_busybox_vm

    base = Path(tempfile.mkdtemp(prefix="corral-bench-vlm-"))
    env = {**os.environ, "CORRAL_DIR": str(base), "CORRAL_MODE": "single",
           "CORRAL_CLUSTER_PREFIX": "bv" + secrets.token_hex(3), "CORRAL_SKIP_INSTALL": "1",
           "CORRAL_CLUSTER_POOL_SIZE": "1GiB", "CORRAL_DEFAULT_NETWORK": "bvbr0",
           "LXD_CONF": str(base / "lxc-conf")}
    for var in ("CORRAL_NATS_URL", "CORRAL_NATS_CREDENTIALS", "CORRAL_CONFIG", "CORRAL_NODE",
                "CORRAL_CLUSTER", "CORRAL_KV_REPLICAS"):
        env.pop(var, None)
    node = [None, {**env, "LXD_DIR": str(base / "cluster" / "node1")},
            {**env, "LXD_DIR": str(base / "cluster" / "node2")}]
    try:
        _run(env, "make", "-s", "-C", str(ROOT), "cluster-up", "N=2")
        meta, rootfs = build_busybox_vm(base / "img", cache_dir=KERNEL_CACHE, size_mib=64)
        _run(node[1], "lxc", "image", "import", str(meta), str(rootfs), "--alias", "bvvm")
        _run(node[1], "lxc", "launch", "bvvm", "bv1", "--vm", "--target", "node1",
             "-c", "limits.memory=128MiB", "-c", "limits.cpu=1",
             "-c", "migration.stateful=true")
        deadline = time.monotonic() + 120
        while subprocess.run(["lxc", "exec", "bv1", "--", "true"], env=node[1],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the VM's agent did not answer within 120 s")
            time.sleep(1)
        downtimes, totals = [], []
        for i in range(moves):
            target = "node2" if i % 2 == 0 else "node1"
            out = _run(node[1], "lxc", "query", "--wait", "-X", "POST",
                       f"/1.0/instances/bv1?target={target}", "--data",
                       json.dumps({"migration": True, "live": True}))
            stats = json.loads(out)["metadata"]["live_migration"]
            downtimes.append(float(stats["downtime_ms"]))
            totals.append(float(stats["total_time_ms"]))
        return downtimes, totals
    finally:
        subprocess.run(["lxc", "delete", "--force", "bv1"], env=node[1], capture_output=True)
        subprocess.run(["make", "-s", "-C", str(ROOT), "cluster-down"], env=env,
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def rows(moves: int = 6) -> list[tuple[str, list[float]]]:
    """The rows for bench/cluster.py's table: downtime and whole move, libvirt's figures."""
    downtimes, totals = measure_moves(moves)
    return [(ROW, downtimes), ("VM live migration, whole (libvirt's total_time)", totals)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=6, help="live moves (back and forth)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, libvirtd)")
    table("VM live migration between 2 namespaced nodes (make cluster-up, libvirtd each)",
          rows(args.moves), note="libvirt's figures from each operation's live_migration")


if __name__ == "__main__":
    main()
