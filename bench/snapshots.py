"""Snapshot, restore, copy, delete-with-snapshots and export figures through the stock
`lxc` client, beside the goals of issue 10 and LXD 5.0's figures on btrfs here.

Starts its own nats-server and stack in a temporary CORRAL_DIR with its own btrfs pool,
bridge, profile and busybox image (unique names, as bench/instances.py), and removes them.

Run: `make bench` or `.venv/bin/python -m bench.snapshots [--runs 10]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from bench.instances import API, setup, teardown  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402

# figure -> (goal ms, LXD 5.0 on btrfs here ms or None)
GOALS: dict[str, tuple[float, float | None]] = {
    "lxc snapshot (stopped)": (30, 41),
    "lxc snapshot (running)": (30, 48),
    "lxc restore (stopped)": (60, None),
    "lxc copy": (40, 54),
    "lxc copy (2 snapshots)": (80, 123),
    "lxc delete (2 snapshots)": (40, 61),
    "lxc export (busybox)": (300, None),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    tag = "s" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        nats = NatsServer(Path(d) / "nats")
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        env = {**os.environ, "LXD_DIR": str(stack.dir)}
        api = None

        def lx(*a: str) -> None:
            subprocess.run(["lxc", *a], env=env, check=True, capture_output=True)

        def timed(fn, items) -> list[float]:
            out = []
            for item in items:
                t0 = time.perf_counter()
                fn(item)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        try:
            stack.start_all()
            api = API(stack.socket)
            setup(api, tag, Path(d))
            img = f"{tag}img"
            src, run = f"{tag}src", f"{tag}run"
            lx("init", img, src, "-p", tag)
            lx("launch", img, run, "-p", tag)
            runs = range(args.runs)
            samples: dict[str, list[float]] = {}
            samples["lxc snapshot (stopped)"] = timed(lambda i: lx("snapshot", src, f"s{i}"),
                                                      runs)
            samples["lxc snapshot (running)"] = timed(lambda i: lx("snapshot", run, f"s{i}"),
                                                      runs)
            samples["lxc restore (stopped)"] = timed(lambda i: lx("restore", src, f"s{i}"),
                                                     runs)
            for i in runs:  # back to two snapshots for the copy and delete figures
                lx("delete", f"{src}/s{i}")
            lx("snapshot", src, "a")
            lx("snapshot", src, "b")
            samples["lxc copy"] = timed(
                lambda i: lx("copy", src, f"{tag}c{i}", "--instance-only"), runs)
            samples["lxc copy (2 snapshots)"] = timed(
                lambda i: lx("copy", src, f"{tag}d{i}"), runs)
            samples["lxc delete (2 snapshots)"] = timed(
                lambda i: lx("delete", f"{tag}d{i}"), runs)
            for i in runs:
                lx("delete", f"{tag}c{i}")
            out = Path(d) / "export.tar.gz"
            samples["lxc export (busybox)"] = timed(
                lambda i: (lx("export", src, str(out)), out.unlink()), runs)
            rows = [(f"{name} (goal {GOALS[name][0]:.0f} ms"
                     + (f", LXD {GOALS[name][1]:.0f} ms)" if GOALS[name][1] else ")"), values)
                    for name, values in samples.items()]
            table("Corral snapshots and copies (busybox, btrfs loop pool, through lxc)", rows,
                  "Goals and LXD 5.0's figures (btrfs, this machine) from issue 10; the lxc "
                  "client itself costs about 11 ms a call.")
        finally:
            if api is not None:
                for name in (run,):
                    try:
                        lx("stop", "--force", name)
                    except subprocess.CalledProcessError:
                        pass
                teardown(api, tag)
            stack.stop_all()
            nats.stop()


if __name__ == "__main__":
    main()
