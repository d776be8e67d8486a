"""Bus and gateway latency: the floor (raw NATS request/reply between two processes) and
`GET /1.0`, `GET /1.0/instances` through the gateway over the unix socket.

Starts its own nats-server and stack in a temporary CORRAL_DIR; prints median/p95/p99.
Run: `make bench` or `.venv/bin/python -m bench.bus [-n 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import UnixHTTPConnection, get, measure, table  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402

RESPONDER = textwrap.dedent("""
    import asyncio, json, sys, nats
    async def main():
        nc = await nats.connect(sys.argv[1], **json.loads(sys.argv[2]))
        async def echo(msg):
            await msg.respond(msg.data)
        await nc.subscribe("bench.echo", cb=echo)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


async def raw_nats(url: str, n: int, creds: dict[str, str]) -> list[float]:
    import time

    import nats

    nc = await nats.connect(url, **creds)
    out = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        await nc.request("bench.echo", b"x" * 64, timeout=2)
        if i >= 50:
            out.append((time.perf_counter() - t0) * 1000)
    await nc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        nats_srv = NatsServer(Path(d) / "nats")
        nats_srv.start()
        creds = nats_srv.connect_options()  # the bus admits no anonymous client
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, nats_srv.url,
                                      json.dumps(creds)], stdout=subprocess.PIPE, text=True)
        stack = Stack(Path(d) / "corral", nats_srv, CORRAL_LOG_LEVEL="info")
        try:
            responder.stdout.readline()
            floor = asyncio.run(raw_nats(nats_srv.url, args.n, creds))
            stack.start_all()
            conn = UnixHTTPConnection(str(stack.socket))
            rows = [("raw NATS request/reply, two processes (floor)", floor)]
            rows.append(("GET /1.0 (gateway + 5 parallel bus requests)",
                         measure(lambda: get(conn, "/1.0"), args.n)))
            rows.append(("GET /1.0/instances (gateway + one bus hop)",
                         measure(lambda: get(conn, "/1.0/instances"), args.n)))
            rows.append(("GET /1.0/instances?recursion=1 (empty)",
                         measure(lambda: get(conn, "/1.0/instances?recursion=1"), args.n)))
            rows.append(("GET /1.0/operations (gateway reads KV)",
                         measure(lambda: get(conn, "/1.0/operations"), args.n // 4)))
            conn.close()
            table("Corral bus and gateway latency (keep-alive client over the unix socket)",
                  rows,
                  "LXD 5.0 here for reference: GET /1.0 median 0.49 ms; "
                  "aim: gateway + one bus hop <= floor + 1 ms.")
        finally:
            stack.stop_all()
            responder.terminate()
            responder.wait(5)
            nats_srv.stop()


if __name__ == "__main__":
    main()
