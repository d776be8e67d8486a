"""Launch figures for pulled images through the stock `lxc` client: a launch from an image
already cached by an earlier pull, against a launch that first pulls the busybox image
(split: lxd.tar.xz + squashfs) from a simplestreams server on loopback over HTTPS, and a
launch from a locally imported image for reference.

Starts its own nats-server and stack in a temporary CORRAL_DIR with its own btrfs pool,
bridge, profile and busybox image (unique names, as bench/instances.py), serves the tree
of tests/simplestreams.py on 127.0.0.1, and removes it all.

Run: `make bench` or `.venv/bin/python -m bench.images [--runs 5]`.
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

from bench.common import get, table  # noqa: E402
from bench.instances import API, setup, teardown  # noqa: E402
from tests import simplestreams  # noqa: E402
from tests.simplestreams import StreamServer, lxc_remote_env  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402

SERIAL = "20260101_0000"


def supports_instance_pull(lx, image: str, name: str, profile: str) -> bool:
    """Whether ``lxc launch REMOTE:ALIAS`` works here (POST /1.0/instances with a pull
    source); else the uncached figure is an ``lxc image copy`` then a launch."""
    try:
        lx("init", image, name, "-p", profile)
    except subprocess.CalledProcessError:
        return False
    lx("delete", "--force", name)
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tag = "i" + uuid.uuid4().hex[:5]
    # The test tree's http.server writes small TLS records without TCP_NODELAY: each
    # response then waits ~40 ms for the client's delayed ACK (Nagle), which no real image
    # server does. The figures are Corral's, not that stall's (before this: +40 ms/request).
    simplestreams._Handler.disable_nagle_algorithm = True
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        work = Path(d)
        nats = NatsServer(work / "nats")
        nats.start()
        stack = Stack(work / "corral", nats, CORRAL_LOG_LEVEL="warning")
        api = None
        srv = None
        try:
            stack.start_all()
            api = API(stack.socket)
            setup(api, tag, work)
            from shared.image.build import build_busybox

            tarball = build_busybox(work / "bb", alias_hint="busybox")
            srv = StreamServer(work / "streams", tarball).start()
            srv.add_version(SERIAL, rootfs=("squashfs",))
            fp = srv.fingerprints[SERIAL]["squashfs"]
            env = {**os.environ, "LXD_DIR": str(stack.dir),
                   **lxc_remote_env(work / "lxc-conf", "ss", srv)}
            remote_alias = f"ss:{srv.os}/{srv.release}"

            def lx(*a: str) -> None:
                subprocess.run(["lxc", *a], env=env, check=True, capture_output=True)

            def drop(name: str) -> None:
                lx("delete", "--force", name)

            def drop_pulled() -> None:
                images = get(api.conn, "/1.0/images?recursion=1")["metadata"]
                if any(i["fingerprint"] == fp for i in images):
                    api.call("DELETE", f"/1.0/images/{fp}")

            def timed(*cmds: tuple[str, ...]) -> float:
                t0 = time.perf_counter()
                for cmd in cmds:
                    lx(*cmd)
                return (time.perf_counter() - t0) * 1000

            direct = supports_instance_pull(lx, remote_alias, f"{tag}probe", tag)
            drop_pulled()
            samples: dict[str, list[float]] = {}
            uncached = ("lxc launch ss:ALIAS (uncached: pull + launch)" if direct else
                        "lxc image copy ss:ALIAS + lxc launch (uncached)")
            cached = ("lxc launch ss:ALIAS (cached)" if direct else
                      "lxc launch (the pulled image, cached)")
            samples[uncached] = []
            for i in range(args.runs):  # each run: no image yet, the pull is timed
                drop_pulled()
                name = f"{tag}u{i}"
                if direct:
                    samples[uncached].append(timed(("launch", remote_alias, name, "-p",
                                                    tag)))
                else:
                    samples[uncached].append(timed(
                        ("image", "copy", remote_alias, "local:", "--alias", f"{tag}ss"),
                        ("launch", f"{tag}ss", name, "-p", tag)))
                drop(name)
            samples[cached] = []
            api_fig = "POST /1.0/instances, pull source (cached), start"
            samples["lxc launch (a locally imported image, reference)"] = []
            for i in range(args.runs):  # the image stays from the last run: cached
                name = f"{tag}c{i}"
                samples[cached].append(timed(
                    ("launch", remote_alias if direct else f"{tag}ss", name, "-p", tag)))
                drop(name)
                name = f"{tag}l{i}"
                samples["lxc launch (a locally imported image, reference)"].append(
                    timed(("launch", f"{tag}img", name, "-p", tag)))
                drop(name)
            if direct:  # the server's share: the same launch through the API, no lxc
                api_local = "POST /1.0/instances, local image, start (reference)"
                samples[api_fig] = []
                samples[api_local] = []
                pulled = {"type": "image", "mode": "pull", "server": srv.url,
                          "protocol": "simplestreams", "alias": f"{srv.os}/{srv.release}",
                          "certificate": srv.cert_pem}
                for i in range(args.runs):  # interleaved: the same load on both
                    for fig, name, source in (
                            (api_fig, f"{tag}a{i}", pulled),
                            (api_local, f"{tag}r{i}", {"type": "image",
                                                       "alias": f"{tag}img"})):
                        t0 = time.perf_counter()
                        api.call("POST", "/1.0/instances", {
                            "name": name, "profiles": [tag], "start": True,
                            "source": source}, headers={"Content-Type": "application/json"})
                        samples[fig].append((time.perf_counter() - t0) * 1000)
                        drop(name)
            size = sum(p.stat().st_size for p in (srv.item_path(SERIAL, "lxd.tar.xz"),
                                                  srv.item_path(SERIAL, "squashfs")))
            table(f"Corral launches from a simplestreams remote (busybox split image, "
                  f"{size / 1024:.0f} KiB, HTTPS on loopback; btrfs loop pool; lxc)",
                  list(samples.items()),
                  "The uncached figure includes resolving the alias (index.json, "
                  "images.json), the download with sha256 checks, the import and the "
                  "image volume; the lxc client itself costs about 11 ms a call.")
        finally:
            if srv is not None:
                srv.stop()
            if api is not None:
                teardown(api, tag)
            stack.stop_all()
            nats.stop()


if __name__ == "__main__":
    main()
