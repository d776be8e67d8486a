"""The stock `lxc monitor` reads Corral's /1.0/events websocket."""

from __future__ import annotations

import subprocess
import time

import yaml


def test_stock_lxc_monitor_sees_lifecycle_events(stack, api, uid):
    env = {**stack.env, "LXD_DIR": str(stack.dir)}
    proc = subprocess.Popen(["lxc", "monitor", "--type=lifecycle", "--format=yaml"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let it connect; events before that are not its to see
        for i in range(3):
            assert api.post("/1.0/profiles", json={"name": f"{uid}m{i}"}).status_code == 200
            time.sleep(0.3)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        for i in range(3):
            api.delete(f"/1.0/profiles/{uid}m{i}")
    # lxc prints one YAML document per event, separated by blank lines (no `---`).
    events = [yaml.safe_load(doc) for doc in out.split("\n\n") if doc.strip()]
    sources = {e["metadata"]["source"] for e in events
               if e["metadata"]["action"] == "profile-created"}
    assert {f"/1.0/profiles/{uid}m{i}" for i in range(3)} <= sources, (out, err)
