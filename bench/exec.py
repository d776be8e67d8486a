"""Exec figures: `lxc exec c -- true` through the stock client, and the REST API's exec
without websockets (its operation waited for), on one running busybox container.

Why its own script: exec is the figure issue 12 cares most about, and tuning it needs a
quick loop (the whole instances bench takes minutes). ``--hold N`` keeps the stack up
for N seconds after the figures (``--loop``: looping `lxc exec`), for a profiler (py-spy) to attach
to the instance service and the gateway (their PIDs are printed).

Run: `.venv/bin/python -m bench.exec [--runs 40] [--hold 0]`.
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

from bench.common import measure, table  # noqa: E402
from bench.instances import API, import_busybox  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402


def setup(api: API, tag: str, workdir: Path) -> None:
    api.call("POST", "/1.0/storage-pools", {"name": tag, "driver": "dir"})
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag}}})
    import_busybox(api, workdir)
    api.call("POST", "/1.0/instances", {"name": f"{tag}c", "profiles": [tag],
                                        "source": {"type": "image",
                                                   "fingerprint": _fingerprint(api)}})
    api.call("PUT", f"/1.0/instances/{tag}c/state", {"action": "start"})


def _fingerprint(api: API) -> str:
    return api.call("GET", "/1.0/images?recursion=1")["metadata"][0]["fingerprint"]


def teardown(api: API, tag: str) -> None:
    for method, path, body in (
            ("PUT", f"/1.0/instances/{tag}c/state", {"action": "stop", "force": True}),
            ("DELETE", f"/1.0/instances/{tag}c", None),
            ("DELETE", f"/1.0/images/{_fingerprint(api)}", None),
            ("DELETE", f"/1.0/profiles/{tag}", None),
            ("DELETE", f"/1.0/storage-pools/{tag}", None)):
        try:
            api.call(method, path, body)
        except Exception as exc:
            print(f"cleanup: {exc}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--loop", action="store_true", help="loop `lxc exec` while holding")
    args = ap.parse_args()
    tag = "e" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        nats = NatsServer(Path(d) / "nats")
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        env = {**os.environ, "LXD_DIR": str(stack.dir)}
        api = None
        try:
            stack.start_all()
            for p in (Path(d), stack.dir):
                p.chmod(p.stat().st_mode | 0o011)
            api = API(stack.socket)
            setup(api, tag, Path(d))
            name = f"{tag}c"

            def lx(*a: str) -> None:
                r = subprocess.run(["lxc", *a], env=env, capture_output=True)
                if r.returncode:
                    raise RuntimeError(f"lxc {' '.join(a)}: {r.stderr.decode().strip()}")

            rows = [
                ("lxc: exec -- true", measure(lambda: lx("exec", name, "--", "true"),
                                              args.runs, warmup=3)),
                ("lxc: version (the client alone)", measure(
                    lambda: lx("version"), args.runs // 2, warmup=1)),
                ("HTTP: exec true (no websockets, /wait)", measure(lambda: api.call(
                    "POST", f"/1.0/instances/{name}/exec",
                    {"command": ["true"], "wait-for-websocket": False,
                     "interactive": False}), args.runs, warmup=3)),
            ]
            table("Corral exec (busybox container, dir pool)", rows)
            if args.hold:
                print(f"holding: instance={stack.procs['instance'].pid} "
                      f"gateway={stack.procs['gateway'].pid} nats={nats.proc.pid}",
                      flush=True)
                end = time.monotonic() + args.hold
                while time.monotonic() < end:
                    if args.loop:
                        lx("exec", name, "--", "true")
                    else:
                        time.sleep(0.5)
        finally:
            if api is not None:
                teardown(api, tag)
            stack.stop_all()
            nats.stop()


if __name__ == "__main__":
    main()
