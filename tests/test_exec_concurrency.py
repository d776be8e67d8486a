"""Exec after the speed work of issue 12: what a user relies on still holds.

The attach now happens in a helper process (python-lxc held the service's GIL for the
whole attach), and a websocket exec attaches while the client connects, the command held
before exec until every data websocket is there. So: many execs at once each get exactly
their own output and exit code (stock `lxc`, and the REST API with record-output); a
command never runs before its websockets are connected; a command killed by a signal
reports 128+N; the command is the helper's child, not the instance service's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from .world import lxc_conf, make_world, wait_op

pytestmark = pytest.mark.root
if os.geteuid() != 0 or shutil.which("lxc") is None or not Path("/bin/busybox").exists():
    pytest.skip("needs root, Debian's lxd-client and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.run = w.create("run", start=True)
        yield w


@pytest.fixture(scope="module")
def lxc_env(stack, tmp_path_factory):
    conf = tmp_path_factory.mktemp("lxcconf")
    env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(conf / "lxc")}
    subprocess.run(["lxc", "list", "--format", "csv"], env=env, capture_output=True,
                   timeout=60)  # the client's first-run greeting goes here
    return env


def test_many_execs_at_once_keep_their_own_output_and_exit_code(world, lxc_env):
    def one(i: int) -> tuple[int, str, str]:
        r = subprocess.run(["lxc", "exec", world.run, "--", "sh", "-c",
                            f"echo out-{i}; echo err-{i} >&2; exit {i}"],
                           env=lxc_env, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(1, 25)))
    for i, (code, out, err) in enumerate(results, start=1):
        assert (code, out, err) == (i, f"out-{i}\n", f"err-{i}\n")


def test_many_recorded_execs_at_once(world, api):
    """No websockets: record-output logs and the operation's return, 12 at once."""
    def one(i: int) -> tuple[int, str, str]:
        r = api.post(f"/1.0/instances/{world.run}/exec", json={
            "command": ["sh", "-c", f"echo rec-{i}; echo rerr-{i} >&2; exit {i + 100}"],
            "record-output": True, "wait-for-websocket": False})
        op = wait_op(api, r)
        meta = op["metadata"]
        out = api.get(meta["output"]["1"]).text
        err = api.get(meta["output"]["2"]).text
        return meta["return"], out, err

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    for i, (code, out, err) in enumerate(results):
        assert (code, out, err) == (i + 100, f"rec-{i}\n", f"rerr-{i}\n")


def test_signal_exit_code(world, lxc_env):
    r = subprocess.run(["lxc", "exec", world.run, "--", "sh", "-c", "kill -9 $$"],
                       env=lxc_env, capture_output=True, timeout=60)
    assert r.returncode == 137, r.stderr


def test_the_command_is_the_attach_helpers_child(world, stack, lxc_env):
    """python-lxc's attach froze the service's loop: it runs in the helper now."""
    proc = subprocess.Popen(["lxc", "exec", world.run, "--", "sleep", "30"], env=lxc_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        service = stack.procs["instance"].pid
        deadline = time.monotonic() + 30
        parent = None
        while time.monotonic() < deadline and parent is None:
            for pid in _pids_of(["sleep", "30"]):
                ppid = _ppid(pid)
                if ppid and _ppid(ppid) == service:
                    parent = ppid
            time.sleep(0.1)
        assert parent is not None, "no sleep 30 under a child of the instance service"
        assert b"lxc_attach_helper" in Path(f"/proc/{parent}/cmdline").read_bytes()
    finally:
        proc.terminate()  # the client goes away: its command is killed (control closes)
        proc.wait(30)


def test_no_command_runs_before_its_websockets_connect(world, api, stack):
    marker = f"/tmp/ws-held-{os.getpid()}"
    r = api.post(f"/1.0/instances/{world.run}/exec", json={
        "command": ["sh", "-c", f"echo ran > {marker}; echo done"],
        "wait-for-websocket": True, "interactive": False})
    assert r.status_code == 202, r.text
    op = r.json()["metadata"]
    root = Path(f"/proc/{world.live(world.run)['pid']}/root")

    async def drive() -> bytes:
        url = f"http://corral/1.0/operations/{op['id']}/websocket?secret="
        conn = aiohttp.UnixConnector(path=str(stack.socket))
        async with aiohttp.ClientSession(connector=conn) as s:
            stdin = await s.ws_connect(url + op["metadata"]["fds"]["0"])
            stdout = await s.ws_connect(url + op["metadata"]["fds"]["1"])
            await asyncio.sleep(1.5)  # stderr still missing: the command must wait
            assert not (root / marker.lstrip("/")).exists(), "ran before its websockets"
            stderr = await s.ws_connect(url + op["metadata"]["fds"]["2"])
            await stdin.send_str("")
            out = b""
            async for msg in stdout:
                out += msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            await stderr.close()
            await stdin.close()
            return out

    assert asyncio.run(drive()) == b"done\n"
    done = api.get(f"/1.0/operations/{op['id']}/wait?timeout=30").json()["metadata"]
    assert done["status"] == "Success" and done["metadata"]["return"] == 0, done
    assert (root / marker.lstrip("/")).read_text() == "ran\n"


def _pids_of(argv: list[str]) -> list[int]:
    want = ("\0".join(argv) + "\0").encode()
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == want:
                    out.append(int(pid))
            except OSError:
                pass
    return out


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_a_held_command_whose_websockets_never_come_never_runs(world, api, stack):
    """The attach begins before the client connects; if it never does, the operation
    fails after the websocket timeout (CORRAL_WS_TIMEOUT: 10 s in the test stack, 30 s by
    default) and the held command exits unrun."""
    marker = f"/tmp/never-{os.getpid()}"
    r = api.post(f"/1.0/instances/{world.run}/exec", json={
        "command": ["sh", "-c", f"echo ran > {marker}"],
        "wait-for-websocket": True, "interactive": False})
    assert r.status_code == 202, r.text
    op = api.get(f"{r.json()['operation']}/wait", params={"timeout": 60}).json()["metadata"]
    assert op["status"] == "Failure" and "websockets" in op["err"], op
    root = Path(f"/proc/{world.live(world.run)['pid']}/root")
    assert not (root / marker.lstrip("/")).exists()
    service = stack.procs["instance"].pid
    helpers = [p for p in _children(service)
               if b"lxc_attach_helper" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert helpers, "no attach helper under the instance service"
    deadline = time.monotonic() + 10
    while _children(helpers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children(helpers[0]), "the held command is still there"


def _children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]
