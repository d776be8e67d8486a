"""The `corral` CLI against the real gateway."""

from __future__ import annotations

import json
import subprocess

import yaml

from .stack import BIN


def corral(stack, *args, socket=None):
    cmd = [str(BIN / "corral")]
    if socket is not None:
        cmd += ["--socket", str(socket)]
    return subprocess.run([*cmd, *args], env=stack.env, capture_output=True, text=True,
                          timeout=60)


def test_info(stack):
    r = corral(stack, "info")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["api_version"] == "1.0"


def test_list_formats(stack):
    r = corral(stack, "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    r = corral(stack, "list")
    assert r.returncode == 0 and "NAME" in r.stdout and "STATE" in r.stdout
    r = corral(stack, "list", "--format", "csv")
    assert r.returncode == 0 and r.stdout == ""


def test_operation_commands(stack, api, uid):
    r = corral(stack, "operation", "list", "--format", "yaml")
    assert r.returncode == 0, r.stderr
    assert isinstance(yaml.safe_load(r.stdout) or [], list)
    r = corral(stack, "operation", "show", "00000000-0000-0000-0000-000000000000")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: Operation not found"


def test_unreachable_server_is_one_clear_line(stack, tmp_path):
    r = corral(stack, "list", socket=tmp_path / "nothing.socket")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: Cannot reach Corral at")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_monitor_prints_events(stack, api, uid):
    proc = subprocess.Popen([str(BIN / "corral"), "monitor", "--type", "lifecycle",
                             "--format", "json", "--count", "1"], env=stack.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            api.post("/1.0/profiles", json={"name": f"{uid}{int(time.monotonic()*1000)%100000}"})
            time.sleep(0.3)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in api.get("/1.0/profiles").json()["metadata"]:
            if p.startswith(f"/1.0/profiles/{uid}"):
                api.delete(p)
    assert proc.returncode == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["type"] == "lifecycle" and event["metadata"]["action"] == "profile-created"
