"""Automation hooks: delivery latency from an event to a webhook, and how many events per
second one webhook hook keeps up with.

Starts its own nats-server and stack in a temporary CORRAL_DIR and a webhook receiver on
loopback (keep-alive HTTP/1.1, answers 200 at once). Events are published straight into
the CORRAL_EVENTS stream (as the services do: JetStream publish with an id), so the
figures are the hooks service's own: consumer fetch, match, signed POST, ack.

- latency: one event at a time, from just before its publish to its arrival at the
  receiver (median, p95, p99);
- throughput: a backlog of N events published as fast as the stream takes them, then the
  time until the receiver has the last one: events/s one hook delivers, in order.

Run: `.venv/bin/python -m bench.hooks [-n 300] [--burst 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from tests.stack import NatsServer, Stack, free_port, socket_client  # noqa: E402

SUBJECT = "corral.events.lifecycle.default.bench"


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, float] = {}
        self.order: list[int] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.perf_counter()
                event = json.loads(body)
                with outer.cond:
                    outer.arrivals.setdefault(event["metadata"]["context"]["k"], now)
                    outer.order.append(event["metadata"]["context"]["i"])
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, key: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.arrivals, timeout):
                raise TimeoutError(f"event {key} never arrived")
            return self.arrivals[key]

    def wait_count(self, n: int, timeout: float = 300) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrivals) >= n, timeout):
                raise TimeoutError(f"{len(self.arrivals)} of {n} events arrived")


def event(i: int, key: str) -> bytes:
    return json.dumps({"type": "lifecycle", "timestamp": "2026-01-01T00:00:00Z",
                       "metadata": {"action": "bench-ran", "source": "/1.0/bench",
                                    "context": {"k": key, "i": i}},
                       "location": "none", "project": "default"},
                      separators=(",", ":")).encode()


async def run(url: str, creds: dict[str, str], recv: Receiver, n: int, burst: int
              ) -> tuple[list[float], float, bool]:
    import nats

    nc = await nats.connect(url, **creds)
    js = nc.jetstream()
    latencies = []
    for i in range(n + 20):
        key = uuid.uuid4().hex
        t0 = time.perf_counter()
        await js.publish(SUBJECT, event(i, key), headers={"Nats-Msg-Id": key})
        t1 = await asyncio.to_thread(recv.wait, key)
        if i >= 20:  # warm-up: connections, caches
            latencies.append((t1 - t0) * 1000)
    recv.order.clear()
    before = len(recv.arrivals)
    t0 = time.perf_counter()
    acks = [js.publish(SUBJECT, event(i, k), headers={"Nats-Msg-Id": k})
            for i, k in ((i, uuid.uuid4().hex) for i in range(burst))]
    for start in range(0, burst, 200):
        await asyncio.gather(*acks[start:start + 200])
    published = time.perf_counter() - t0
    await asyncio.to_thread(recv.wait_count, before + burst)
    elapsed = time.perf_counter() - t0
    in_order = recv.order == list(range(burst))
    await nc.close()
    print(f"burst: {burst} events published in {published:.2f} s "
          f"({burst / published:.0f}/s into the stream)")
    return latencies, burst / elapsed, in_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300, help="events for the latency figure")
    ap.add_argument("--burst", type=int, default=2000, help="events for the throughput")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        nats_srv = NatsServer(Path(d) / "nats", Path(d) / "corral")
        nats_srv.start()
        stack = Stack(Path(d) / "corral", nats_srv, CORRAL_LOG_LEVEL="info")
        recv = Receiver()
        try:
            stack.start_all()
            with socket_client(stack) as api:
                r = api.post("/1.0/hooks", json={
                    "name": "bench", "type": "lifecycle", "action": "bench-*",
                    "webhook": {"url": f"http://127.0.0.1:{recv.port}/", "secret": "k"}})
                assert r.status_code == 200, r.text
            latencies, rate, in_order = asyncio.run(
                run(nats_srv.url, nats_srv.connect_options(), recv, args.n, args.burst))
            table("Hook delivery: event published -> signed webhook POST received",
                  [("one event at a time (stream -> consumer -> POST)", latencies)])
            print(f"throughput: one webhook hook delivered {rate:.0f} events/s "
                  f"(backlog of {args.burst}, {'in order' if in_order else 'OUT OF ORDER'})")
        finally:
            recv.server.shutdown()
            stack.stop_all()
            nats_srv.stop()


if __name__ == "__main__":
    main()
