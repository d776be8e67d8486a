"""`corral init --auto` (what `make up` runs): defaults created once, then left alone."""

from __future__ import annotations

import subprocess

from .stack import BIN


def test_init_auto_creates_defaults_once(stack, api, uid):
    bridge = f"{uid[:9]}br"
    cmd = [str(BIN / "corral"), "init", "--auto", "--network", bridge, "--no-nat",
           "--pool-size", "1GiB"]
    pool_existed = api.get("/1.0/storage-pools/default").status_code == 200
    profile_before = api.get("/1.0/profiles/default").json()["metadata"]
    try:
        first = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        pool = api.get("/1.0/storage-pools/default").json()["metadata"]
        assert pool["driver"] in ("btrfs", "dir")
        net = api.get(f"/1.0/networks/{bridge}").json()["metadata"]
        assert net["managed"] and net["config"]["ipv4.nat"] == "false"
        if profile_before is None:
            devices = api.get("/1.0/profiles/default").json()["metadata"]["devices"]
            assert devices["root"] == {"type": "disk", "path": "/", "pool": "default"}
            assert devices["eth0"]["network"] == bridge
        # Idempotent: a second run creates nothing and says nothing.
        second = subprocess.run(cmd, env=stack.env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 0, second.stderr
        assert second.stdout == ""
    finally:
        if profile_before is None and api.get("/1.0/profiles/default").status_code == 200:
            api.put("/1.0/profiles/default", json={"config": {}, "devices": {}})
        api.delete(f"/1.0/networks/{bridge}")
        if not pool_existed:
            api.delete("/1.0/storage-pools/default")
