"""``GET /1.0/resources`` through the stock client: ``lxc info --resources``."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from .stack import BIN

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


def lxc(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                          capture_output=True, text=True, timeout=60)


def test_lxc_info_resources_shows_this_hosts_hardware(stack, api):
    r = lxc(stack, "info", "--resources")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    machine = os.uname().machine
    assert f"CPU ({machine}):" in out or f"CPUs ({machine}):" in out, out
    assert "Cores:" in out and "Memory:" in out
    assert "Disk:" in out or "Disks:" in out
    body = api.get("/1.0/resources").json()["metadata"]
    assert body["cpu"]["total"] == os.cpu_count()
    mem_kb = int(open("/proc/meminfo").read().split()[1])
    assert body["memory"]["total"] == mem_kb * 1024
    disks = {d["id"] for d in body["storage"]["disks"]}
    assert disks and disks <= set(os.listdir("/sys/class/block"))
    assert not any(d.startswith("loop") for d in disks)
    nics = [p["id"] for c in body["network"]["cards"] for p in c["ports"]]
    assert all(os.path.exists(f"/sys/class/net/{n}/device") for n in nics)
    assert body["pci"]["total"] == len(os.listdir("/sys/bus/pci/devices"))


def test_resources_of_an_unknown_node_is_an_error(api):
    r = api.get("/1.0/resources", params={"target": "no-such-node"})
    assert r.status_code == 503, r.text
    assert "instance" in r.json()["error"]
    assert api.get("/1.0/resources", params={"target": "a.b"}).status_code == 400


def test_corral_info_resources(stack):
    r = subprocess.run([str(BIN / "corral"), "info", "--resources"], env=stack.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["CPU"]["Threads"] == os.cpu_count()
    assert doc["Memory"]["Total"] == int(open("/proc/meminfo").read().split()[1]) * 1024
    assert set(doc["Disks"]) <= set(os.listdir("/sys/class/block"))
