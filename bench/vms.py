"""VM figures through the HTTP API, under TCG: launch to agent-ready, exec, stop, delete.

"Launch to agent-ready" is from the create request (``start: true``) until ``exec true``
through the agent first succeeds: what a user waits for before ``lxc exec`` works. The aim
is 4 s under TCG. Starts its own nats-server, stack (temporary CORRAL_DIR) and, unless one
runs, libvirtd (``deploy/libvirt.sh up``, stopped again only if it started it); its own
btrfs pool, bridge and profile carry a unique prefix and are removed at the end.

Run: `.venv/bin/python -m bench.vms [--runs 5]`.
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
from bench.instances import API, teardown, timed  # noqa: E402
from tests.stack import NatsServer, Stack  # noqa: E402

KERNEL_CACHE = Path("/var/cache/corral-test/vm-kernel")


def agent_ready(api: API, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            op = api.call("POST", f"/1.0/instances/{name}/exec", {"command": ["true"]})
            if op["metadata"]["return"] == 0:
                return
        except RuntimeError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the agent of {name} did not answer within {timeout} s")


def setup(api: API, tag: str, workdir: Path) -> None:
    from shared.image.build_vm import build_busybox_vm

    api.call("POST", "/1.0/storage-pools", {"name": tag, "driver": "btrfs",
                                            "config": {"size": "2GiB"}})
    api.call("POST", "/1.0/networks", {"name": f"{tag}br", "type": "bridge",
                                       "config": {"ipv4.address": "auto", "ipv4.nat": "false",
                                                  "ipv6.address": "none"}})
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag},
        "eth0": {"type": "nic", "name": "eth0", "network": f"{tag}br"}}})
    meta, rootfs = build_busybox_vm(workdir / "image", cache_dir=KERNEL_CACHE)
    boundary = uuid.uuid4().hex
    body = b""
    for part, path in (("metadata", meta), ("rootfs.img", rootfs)):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"; "
                 f"filename=\"{path.name}\"\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    op = api.call("POST", "/1.0/images", raw=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    api.call("POST", "/1.0/images/aliases", {"name": f"{tag}img",
                                             "target": op["metadata"]["fingerprint"]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tag = "b" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        nats = NatsServer(Path(d) / "nats")
        nats.start()
        stack = Stack(Path(d) / "corral", nats, CORRAL_LOG_LEVEL="warning")
        env = {**os.environ, "CORRAL_DIR": str(stack.dir), "CORRAL_APT_UPDATED": "1"}
        subprocess.run([str(ROOT / "deploy/libvirt.sh"), "up"], env=env, check=True,
                       capture_output=True)
        api = None
        try:
            stack.start_all()
            api = API(stack.socket)
            deadline = time.monotonic() + 30
            while "qemu" not in get(api.conn, "/1.0")["metadata"]["environment"]["driver"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the instance service does not see libvirtd")
                time.sleep(0.2)
            setup(api, tag, Path(d))
            names = [f"{tag}v{i}" for i in range(args.runs)]
            img = {"type": "image", "alias": f"{tag}img"}

            def launch(name: str) -> None:
                api.call("POST", "/1.0/instances", {
                    "name": name, "source": img, "profiles": [tag], "start": True,
                    "type": "virtual-machine",
                    "config": {"limits.cpu": "1", "limits.memory": "256MiB"}})
                agent_ready(api, name)

            rows = [("HTTP: launch to agent-ready (create+start+boot)", timed(launch, names))]
            rows.append(("HTTP: exec true (agent)", timed(lambda n: api.call(
                "POST", f"/1.0/instances/{n}/exec", {"command": ["true"]}), names * 4)))
            rows.append(("HTTP: GET recursion=2", timed(
                lambda _n: get(api.conn, "/1.0/instances?recursion=2"), names * 4)))
            rows.append(("HTTP: stop (ACPI, clean shutdown)", timed(lambda n: api.call(
                "PUT", f"/1.0/instances/{n}/state", {"action": "stop", "timeout": 30}),
                names)))
            rows.append(("HTTP: delete", timed(lambda n: api.call(
                "DELETE", f"/1.0/instances/{n}"), names)))
            table("Corral VMs (busybox VM image, QEMU TCG under libvirt, btrfs pool, bridge)",
                  rows, "Aim: agent ready within 4 s of the launch request.")
        finally:
            if api is not None:
                teardown(api, tag)
            stack.stop_all()
            nats.stop()
            subprocess.run([str(ROOT / "deploy/libvirt.sh"), "down"], env=env, check=False,
                           capture_output=True)


if __name__ == "__main__":
    main()
