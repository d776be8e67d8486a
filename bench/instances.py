"""Instance figures, through the HTTP API and through the stock `lxc` client.

Launch (create + start) from a cached image, start, stop --force, delete, `exec true`,
`GET /1.0/instances?recursion=1|2` with 10 and 100 instances, and the RSS of the whole
suite with 10 instances running. Starts its own nats-server and stack in a temporary
CORRAL_DIR, with its own btrfs pool, bridge and profile (unique names), and removes them.

Run: `make bench` or `.venv/bin/python -m bench.instances [--runs 10] [--many 100]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import UnixHTTPConnection, get, measure, table  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402


class API:
    """Keep-alive JSON calls over the unix socket, waiting on operations."""

    def __init__(self, socket: Path) -> None:
        self.conn = UnixHTTPConnection(str(socket))

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None,
             headers: dict | None = None) -> dict:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        self.conn.request(method, path, body=data, headers=headers or {})
        resp = self.conn.getresponse()
        out = json.loads(resp.read())
        if out.get("type") == "error":
            raise RuntimeError(f"{method} {path}: {out['error']}")
        if out.get("type") == "async":
            op = get(self.conn, out["operation"] + "/wait?timeout=120")["metadata"]
            if op["status"] != "Success":
                raise RuntimeError(f"{method} {path}: {op['err']}")
            return op
        return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--many", type=int, default=100)
    args = ap.parse_args()
    tag = "b" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        nats = NatsServer(Path(d) / "nats")
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        lxc_env = {**os.environ, "LXD_DIR": str(stack.dir)}
        api = None
        try:
            stack.start_all()
            api = API(stack.socket)
            setup(api, tag, Path(d))
            rows = []
            img = {"type": "image", "alias": f"{tag}img"}

            def launch(name: str) -> None:
                api.call("POST", "/1.0/instances", {"name": name, "source": img,
                                                     "profiles": [tag]})
                api.call("PUT", f"/1.0/instances/{name}/state", {"action": "start"})

            names = [f"{tag}h{i}" for i in range(args.runs)]
            rows.append(("HTTP: launch (create + start)", timed(launch, names)))
            rows.append(("HTTP: exec true", measure(lambda: api.call(
                "POST", f"/1.0/instances/{names[0]}/exec",
                {"command": ["true"], "wait-for-websocket": False, "interactive": False}),
                args.runs * 3, warmup=2)))
            rows.append((f"HTTP: GET recursion=1 ({len(names)} instances)",
                         measure(lambda: get(api.conn, "/1.0/instances?recursion=1"), 200)))
            rows.append((f"HTTP: GET recursion=2 ({len(names)} instances)",
                         measure(lambda: get(api.conn, "/1.0/instances?recursion=2"), 100)))
            pids = [p.pid for p in stack.procs.values()] + [nats.proc.pid]
            rss = rss_kib(pids)
            rows.append(("HTTP: stop --force", timed(lambda n: api.call(
                "PUT", f"/1.0/instances/{n}/state", {"action": "stop", "force": True}), names)))
            rows.append(("HTTP: start", timed(lambda n: api.call(
                "PUT", f"/1.0/instances/{n}/state", {"action": "start"}), names)))
            for n in names:
                api.call("PUT", f"/1.0/instances/{n}/state", {"action": "stop", "force": True})
            rows.append(("HTTP: delete", timed(lambda n: api.call(
                "DELETE", f"/1.0/instances/{n}"), names)))

            lxc_names = [f"{tag}l{i}" for i in range(args.runs)]
            lx = lambda *a: subprocess.run(["lxc", *a], env=lxc_env, check=True,  # noqa: E731
                                           capture_output=True)
            rows.append(("lxc: launch", timed(lambda n: lx("launch", f"{tag}img", n, "-p",
                                                          tag), lxc_names)))
            rows.append(("lxc: exec -- true", timed(lambda n: lx("exec", n, "--", "true"),
                                                    lxc_names)))
            rows.append(("lxc: stop --force", timed(lambda n: lx("stop", "--force", n),
                                                    lxc_names)))
            rows.append(("lxc: start", timed(lambda n: lx("start", n), lxc_names)))
            rows.append(("lxc: delete --force", timed(lambda n: lx("delete", "--force", n),
                                                      lxc_names)))

            many = [f"{tag}m{i}" for i in range(args.many)]
            for n in many:
                launch(n)
            rows.append((f"HTTP: GET recursion=1 ({len(many)} instances)",
                         measure(lambda: get(api.conn, "/1.0/instances?recursion=1"), 100)))
            rows.append((f"HTTP: GET recursion=2 ({len(many)} instances)",
                         measure(lambda: get(api.conn, "/1.0/instances?recursion=2"), 30)))
            for n in many:
                api.call("PUT", f"/1.0/instances/{n}/state", {"action": "stop", "force": True})
                api.call("DELETE", f"/1.0/instances/{n}")
            table("Corral instances (busybox, unprivileged, btrfs loop pool, bridge + DHCP)",
                  rows, f"RSS of nats-server + services + gateway with {len(names)} "
                  f"instances running: {rss / 1024:.1f} MiB\n"
                  "LXD 5.0 here through lxc: launch 330 ms, start 206, stop --force 710, "
                  "delete 52, exec 42; recursion=1 (10) 4.2 ms, recursion=2 (10) 40 ms.")
        finally:
            if api is not None:
                teardown(api, tag)
            stack.stop_all()
            nats.stop()


def timed(fn, names: list[str]) -> list[float]:
    out = []
    for n in names:
        t0 = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def setup(api: API, tag: str, workdir: Path) -> None:
    api.call("POST", "/1.0/storage-pools", {"name": tag, "driver": "btrfs",
                                            "config": {"size": "4GiB"}})
    api.call("POST", "/1.0/networks", {"name": f"{tag}br", "type": "bridge",
                                       "config": {"ipv4.address": "auto"}})
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag},
        "eth0": {"type": "nic", "name": "eth0", "network": f"{tag}br"}}})
    import_busybox(api, workdir, alias=f"{tag}img")


def import_busybox(api: API, workdir: Path, alias: str | None = None) -> None:
    """The busybox test image built under ``workdir`` and uploaded (``alias`` on it: the
    stack's only image)."""
    from shared.image.build import build_busybox

    tarball = build_busybox(workdir / "image")
    api.call("POST", "/1.0/images", raw=tarball.read_bytes(),
             headers={"Content-Type": "application/octet-stream",
                      "X-LXD-filename": tarball.name})
    if alias:
        fp = next(i["fingerprint"]
                  for i in get(api.conn, "/1.0/images?recursion=1")["metadata"])
        api.call("POST", "/1.0/images/aliases", {"name": alias, "target": fp})
    shutil.rmtree(workdir / "image", ignore_errors=True)


def teardown(api: API, tag: str) -> None:
    """Best effort: remove everything the bench made, whatever state it is in."""
    for url in get(api.conn, "/1.0/instances")["metadata"]:
        name = url.rsplit("/", 1)[-1]
        if name.startswith(tag):
            for method, path, body in (
                    ("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True}),
                    ("DELETE", f"/1.0/instances/{name}", None)):
                try:
                    api.call(method, path, body)
                except Exception:
                    pass
    for method, path in (("DELETE", f"/1.0/images/aliases/{tag}img"),
                         ("DELETE", f"/1.0/profiles/{tag}"),
                         ("DELETE", f"/1.0/networks/{tag}br")):
        try:
            api.call(method, path)
        except Exception:
            pass
    try:
        for img in get(api.conn, "/1.0/images")["metadata"]:
            api.call("DELETE", img)
        api.call("DELETE", f"/1.0/storage-pools/{tag}")
    except Exception as exc:
        print(f"cleanup: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
