"""Helpers of deploy/cluster-up.sh that are easier in Python than in bash.

    python deploy/cluster_helper.py subnet PREFIX        a free private /24 ("10.a.b")
    python deploy/cluster_helper.py routes DIR HOST...   CORRAL_NATS_ROUTES for cluster.conf
    python deploy/cluster_helper.py wait-js DIR TIMEOUT  (run inside a node's namespace)

The subnet of the nodes' links is chosen from local facts only (the host's addresses and
routes), never by probing the network (PLATFORM.md): a hash of the prefix gives a stable
first guess, and the next /24 is taken while the guess overlaps anything the host routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (all tables)."""
    nets: list[ipaddress.IPv4Network] = []
    routes = json.loads(subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"],
                                       capture_output=True, text=True, check=True).stdout)
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))  # type: ignore[arg-type]
            except ValueError:
                continue
    addrs = json.loads(subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True,
                                      text=True, check=True).stdout)
    for link in addrs:
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def free_subnet(prefix: str) -> str:
    taken = _host_networks()
    start = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % (200 * 256)
    for i in range(200 * 256):
        n = (start + i) % (200 * 256)
        candidate = ipaddress.ip_network(f"10.{50 + n // 256}.{n % 256}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate.network_address).rsplit(".", 1)[0]
    raise SystemExit("corral: error: no free 10.50-249.x.0/24 subnet on this host")


async def wait_jetstream(corral_dir: Path, timeout: float) -> None:
    """Wait until the clustered JetStream can make a bucket with CORRAL_KV_REPLICAS
    replicas (the meta leader is elected and enough peers are current), by opening the
    ``members`` bucket: the services would otherwise fail to open theirs at start."""
    from shared.bus import Bus
    from shared.cluster import open_members
    from shared.config import load_config

    cfg = load_config(dir=corral_dir, nats_credentials=corral_dir / "credentials" / "admin.json")
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    bus = Bus(cfg, "admin")
    await bus.connect(wait=timeout)
    try:
        while time.monotonic() < deadline:
            try:
                await open_members(bus)
                return
            except Exception as exc:  # not ready yet: no meta leader, too few peers
                last = exc
            await asyncio.sleep(0.5)
    finally:
        await bus.close()
    raise SystemExit(f"corral: error: JetStream not ready within {timeout:.0f} s: {last}")


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == "subnet":
        print(free_subnet(args[0]))
    elif cmd == "routes":
        from shared.auth import route_urls

        print(route_urls(Path(args[0]), args[1:]))
    elif cmd == "wait-js":
        asyncio.run(wait_jetstream(Path(args[0]), float(args[1])))
    else:
        raise SystemExit(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
