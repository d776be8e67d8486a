"""Concurrent launches and deletes: N containers from one image at once, through HTTP.

For each batch size, N launches (create + start, as ``lxc launch``) are sent at once and
each is timed from its POST to its operation's end; then N stops and N deletes at once.
The table gives, per batch, the wall time of the whole batch and the median and p95 of
one launch (and of one delete), plus how many failed (none expected: 30 launches at once
used to lose 40-57 % to "Image is being changed by someone else").

Starts its own nats-server and stack in a temporary CORRAL_DIR with its own btrfs pool and
profile (no network: this measures the instance, image and storage services), and removes
them, also when interrupted.

Run: `.venv/bin/python -m bench.concurrency [--batches 1,10,25,50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct  # noqa: E402
from bench.instances import API, import_busybox, teardown  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402


async def _op(client: httpx.AsyncClient, method: str, url: str, body: object = None
              ) -> tuple[float, str | None]:
    """(milliseconds from request to the operation's end, error or None)."""
    t0 = time.perf_counter()
    r = await client.request(method, url, json=body)
    if r.status_code != 202:
        return (time.perf_counter() - t0) * 1000, f"{r.status_code} {r.text[:200]}"
    op = (await client.get(f"{r.json()['operation']}/wait",
                           params={"timeout": 600})).json()["metadata"]
    err = None if op["status"] == "Success" else op.get("err") or op["status"]
    return (time.perf_counter() - t0) * 1000, err


async def _batch(client: httpx.AsyncClient, calls: list[tuple[str, str, object]]
                 ) -> tuple[float, list[float], list[str]]:
    """Run every call at once: (wall seconds, each call's ms, errors)."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_op(client, m, u, b) for m, u, b in calls))
    wall = time.perf_counter() - t0
    return wall, [ms for ms, _ in results], [e for _, e in results if e]


async def run(socket: Path, tag: str, batches: list[int]) -> list[tuple]:
    rows = []
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)),
                                 base_url="http://corral", timeout=900) as client:
        for size in batches:
            names = [f"{tag}-{size}-{i}" for i in range(size)]
            try:
                launch = await _batch(client, [("POST", "/1.0/instances", {
                    "name": n, "source": {"type": "image", "alias": f"{tag}img"},
                    "profiles": [tag], "start": True}) for n in names])
                await _batch(client, [("PUT", f"/1.0/instances/{n}/state",
                                       {"action": "stop", "force": True}) for n in names])
                delete = await _batch(client, [("DELETE", f"/1.0/instances/{n}", None)
                                               for n in names])
            finally:
                await _sweep(client, names)
            rows.append((size, launch, delete))
            print(f"batch of {size}: launches {launch[0]:.1f} s, deletes {delete[0]:.1f} s,"
                  f" failures {len(launch[2]) + len(delete[2])}", file=sys.stderr)
    return rows


async def _sweep(client: httpx.AsyncClient, names: list[str]) -> None:
    """Remove whatever of this batch is still there (after a failure or an interrupt)."""
    listed = {u.rsplit("/", 1)[-1] for u in
              (await client.get("/1.0/instances")).json()["metadata"]}
    for n in names:
        if n in listed:
            await _op(client, "PUT", f"/1.0/instances/{n}/state",
                      {"action": "stop", "force": True})
            await _op(client, "DELETE", f"/1.0/instances/{n}")


def print_table(rows: list[tuple]) -> None:
    print("\nConcurrent launches (create + start) and deletes from one busybox image "
          "(unprivileged, btrfs loop pool, no NIC)")
    print(f"{'batch':>5} {'launch wall s':>13} {'median ms':>10} {'p95 ms':>9} "
          f"{'delete wall s':>13} {'median ms':>10} {'p95 ms':>9} {'failed':>6}")
    for size, (lwall, lms, lerr), (dwall, dms, derr) in rows:
        print(f"{size:>5} {lwall:>13.2f} {statistics.median(lms):>10.0f} "
              f"{pct(lms, 95):>9.0f} {dwall:>13.2f} {statistics.median(dms):>10.0f} "
              f"{pct(dms, 95):>9.0f} {len(lerr) + len(derr):>6}")
    errors = [e for _s, (_w, _m, le), (_dw, _dm, de) in rows for e in le + de]
    if errors:
        print("first failures: " + "; ".join(errors[:3]))


def setup(api: API, tag: str, workdir: Path) -> None:
    """A btrfs pool, a profile with only a root disk, the busybox image as ``<tag>img``."""
    api.call("POST", "/1.0/storage-pools", {"name": tag, "driver": "btrfs",
                                            "config": {"size": "4GiB"}})
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag}}})
    import_busybox(api, workdir, alias=f"{tag}img")


def _nats(d: Path) -> NatsServer:
    try:  # the server's users and credentials live in the stack's CORRAL_DIR
        return NatsServer(d / "nats", d / "corral")  # type: ignore[call-arg]
    except TypeError:
        return NatsServer(d / "nats")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,25,50",
                    help="comma-separated batch sizes (default 1,10,25,50)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    tag = "k" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)  # unprivileged roots traverse it
        nats = _nats(Path(d))
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        api = None
        try:
            stack.start_all()
            api = API(stack.socket)
            setup(api, tag, Path(d))
            rows = asyncio.run(run(stack.socket, tag, batches))
            print_table(rows)
        finally:
            if api is not None:
                teardown(api, tag)
            stack.stop_all()
            nats.stop()


if __name__ == "__main__":
    main()
