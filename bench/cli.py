"""Wall time of the `corral` CLI, next to its goals and to the stock `lxc` client.

`corral --help` (goal 100 ms) and `corral list` (goal 150 ms) as a person runs them: a new
process each time, the console script pip made. `lxc list` against the same socket and
`python -c pass` (the floor every Python CLI pays) for comparison. Starts its own
nats-server and stack in a temporary CORRAL_DIR, so it needs nothing running and leaves
nothing behind.

Run: `make bench` or `.venv/bin/python -m bench.cli [--runs 30]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct  # noqa: E402
from tests.stack import BIN, NatsServer, Stack  # noqa: E402

GOALS_MS = {"corral --help": 100.0, "corral list": 150.0}


def wall_ms(argv: list[str], env: dict[str, str], runs: int, warmup: int = 3) -> list[float]:
    """Run ``argv`` ``runs`` times (after ``warmup``), each a new process; ms per run."""
    out = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        res = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        elapsed = (time.perf_counter() - t0) * 1000
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}")
        if i >= warmup:
            out.append(elapsed)
    return out


def report(rows: list[tuple[str, list[float]]]) -> bool:
    """Print the table; True when every figure with a goal meets it (by its median)."""
    print(f"\n{'command':<20} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'goal ms':>8}  ")
    ok = True
    for name, samples in rows:
        med = statistics.median(samples)
        goal = GOALS_MS.get(name)
        verdict = ""
        if goal is not None:
            verdict = "ok" if med <= goal else "OVER"
            ok = ok and med <= goal
        print(f"{name:<20} {len(samples):>4} {med:>10.1f} {pct(samples, 95):>8.1f} "
              f"{goal if goal is not None else '':>8}  {verdict}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        nats = NatsServer(Path(d) / "nats")
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        try:
            stack.start_all()
            env = {**os.environ, "CORRAL_DIR": str(stack.dir), "LXD_DIR": str(stack.dir)}
            corral = str(BIN / "corral")
            rows = [
                ("python -c pass", wall_ms([sys.executable, "-c", "pass"], env, args.runs)),
                ("corral --help", wall_ms([corral, "--help"], env, args.runs)),
                ("corral list", wall_ms([corral, "list"], env, args.runs)),
            ]
            lxc = shutil.which("lxc")
            if lxc:
                rows.append(("lxc list", wall_ms([lxc, "list"], env, args.runs)))
            else:
                print("lxc not installed: no comparison row")
        finally:
            stack.stop_all()
            nats.stop()
    print(f"\nCLI wall time, {args.runs} runs each, a new process per run "
          f"({os.cpu_count()} cores); `corral list` with no instances")
    ok = report(rows)
    print("\nall goals met" if ok else "\nsome goals not met (medians above)")


if __name__ == "__main__":
    main()
