"""Shared bits of the benchmarks: timing statistics, a table, a keep-alive unix client."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import time
from typing import Callable


class UnixHTTPConnection(http.client.HTTPConnection):
    """A keep-alive HTTP/1.1 connection over a unix socket (what `lxc` does)."""

    def __init__(self, path: str) -> None:
        super().__init__("corral")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def get(conn: UnixHTTPConnection, path: str) -> dict:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
    return json.loads(body)


def measure(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def table(title: str, rows: list[tuple[str, list[float]]], note: str = "") -> None:
    print(f"\n{title}")
    print(f"{'figure':<52} {'n':>6} {'median ms':>10} {'p95 ms':>9} {'p99 ms':>9}")
    for name, samples in rows:
        print(f"{name:<52} {len(samples):>6} {statistics.median(samples):>10.3f} "
              f"{pct(samples, 95):>9.3f} {pct(samples, 99):>9.3f}")
    if note:
        print(note)
