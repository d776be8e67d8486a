"""Exec, files, console and logs of a real container, through HTTP, the CLI and stock `lxc`.

A module fixture makes (``tests/world.py``) a dir pool, a profile with only a root disk
(no network at all) and imports the busybox image through the API, then creates two
containers (one started); everything carries a unique ``t`` + hex prefix and is removed at
the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from .stack import BIN, wait_for
from .world import lxc_conf, make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def env(stack, api, busybox_tarball):
    outside = Path(tempfile.mkdtemp(prefix="crtout"))
    try:
        with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
            config = {"environment.CORRAL_T": "from-config"}
            run = w.create("run", start=True, config=config)
            off = w.create("off", config=config)
            wait_for(lambda: "console" in _extensions(stack), 30, what="the io extensions")
            yield {"run": run, "off": off, "outside": outside}
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def _extensions(stack) -> list[str]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.socket))) as c:
        return c.get("http://corral/1.0").json()["metadata"]["api_extensions"]


# -- an exec client over the gateway's websockets ----------------------------------------

async def ws_exec(stack, name: str, command: list[str], stdin: bytes = b"",
                  control: list[dict] | None = None, **body: Any
                  ) -> tuple[dict, bytes, bytes]:
    """Run ``command``; returns (final operation, stdout (or pty output), stderr)."""
    req = {"command": command, "wait-for-websocket": True, **body}
    conn = aiohttp.UnixConnector(path=str(stack.socket))
    async with aiohttp.ClientSession(connector=conn) as http:
        async with http.post(f"http://corral/1.0/instances/{name}/exec", json=req) as r:
            assert r.status == 202, await r.text()
            op = (await r.json())["metadata"]
        assert op["class"] == "websocket" and op["description"] == "Executing command"
        fds = op["metadata"]["fds"]
        base = f"http://corral/1.0/operations/{op['id']}/websocket?secret="
        ctl = await http.ws_connect(base + fds["control"])
        socks = {k: await http.ws_connect(base + v) for k, v in fds.items() if k != "control"}
        out = {k: b"" for k in socks}

        async def recv(k: str) -> None:
            async for msg in socks[k]:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                out[k] += msg.data

        readers = [asyncio.ensure_future(recv(k)) for k in (["0"] if req.get("interactive")
                                                            else ["1", "2"])]
        for i in range(0, len(stdin), 100_000):
            await socks["0"].send_bytes(stdin[i:i + 100_000])
        for msg in control or []:
            await asyncio.sleep(0.3)
            await ctl.send_str(json.dumps(msg))
        if not req.get("interactive"):
            await socks["0"].send_str("")  # LXD's stdin barrier
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        async with http.get(f"http://corral/1.0/operations/{op['id']}/wait") as r:
            final = (await r.json())["metadata"]
        await ctl.close()
        for ws in socks.values():
            await ws.close()
    return final, out.get("1", out.get("0", b"")), out.get("2", b"")


# -- exec ----------------------------------------------------------------------------------

async def test_exec_exit_code_and_stderr_apart(env, stack):
    final, out, err = await ws_exec(stack, env["run"],
                                    ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert final["status"] == "Success" and final["metadata"]["return"] == 7
    assert out == b"out\n" and err == b"err\n"
    assert final["metadata"]["interactive"] is False


async def test_exec_stdin_binary_roundtrip(env, stack):
    payload = os.urandom(300_000)
    final, out, _ = await ws_exec(stack, env["run"], ["cat"], stdin=payload)
    assert final["metadata"]["return"] == 0 and out == payload


async def test_exec_environment_cwd_and_defaults(env, stack):
    final, out, _ = await ws_exec(stack, env["run"], ["sh", "-c", "env; pwd"],
                                  environment={"FOO": "bar"}, cwd="/tmp")
    lines = out.decode().splitlines()
    assert {"FOO=bar", "CORRAL_T=from-config", "HOME=/root", "USER=root",
            "LANG=C.UTF-8"} <= set(lines)
    assert any(x.startswith("PATH=/usr/local/sbin") for x in lines) and lines[-1] == "/tmp"
    assert final["metadata"]["environment"]["FOO"] == "bar"


async def test_exec_pty_size_resize_and_exit(env, stack):
    final, out, _ = await ws_exec(
        stack, env["run"], ["sh", "-c", "stty size; sleep 1; stty size; exit 3"],
        interactive=True, width=100, height=30,
        control=[{"command": "window-resize", "args": {"width": "120", "height": "40"}}])
    assert final["metadata"]["return"] == 3
    assert b"30 100" in out and b"40 120" in out
    assert set(final["metadata"]["fds"]) == {"0", "control"}


async def test_exec_signal_forwarded(env, stack):
    final, _, _ = await ws_exec(stack, env["run"], ["sleep", "100"],
                                control=[{"command": "signal", "signal": 15}])
    assert final["metadata"]["return"] == 128 + 15


def test_exec_record_output_and_logs(env, api):
    r = api.post(f"/1.0/instances/{env['run']}/exec", json={
        "command": ["sh", "-c", "echo recorded; echo oops >&2; exit 4"],
        "record-output": True})
    assert r.status_code == 202 and r.json()["metadata"]["class"] == "task"
    op = api.get(f"/1.0/operations/{r.json()['metadata']['id']}/wait").json()["metadata"]
    assert op["status"] == "Success" and op["metadata"]["return"] == 4
    out_url, err_url = op["metadata"]["output"]["1"], op["metadata"]["output"]["2"]
    assert api.get(out_url).content == b"recorded\n"
    assert api.get(err_url).content == b"oops\n"
    listed = api.get(f"/1.0/instances/{env['run']}/logs").json()["metadata"]
    assert out_url in listed and f"/1.0/instances/{env['run']}/logs/lxc.log" in listed
    assert api.get(f"/1.0/instances/{env['run']}/logs/..%2Fx").status_code in (400, 404)
    assert api.delete(out_url).status_code == 200
    assert api.get(out_url).status_code == 404
    assert api.delete(f"/1.0/instances/{env['run']}/logs/lxc.log").status_code == 400


def test_exec_refused_when_stopped_or_missing(env, api):
    r = api.post(f"/1.0/instances/{env['off']}/exec", json={"command": ["true"]})
    assert r.status_code == 400 and r.json()["error"] == "Instance is not running"
    r = api.post("/1.0/instances/crtnope0/exec", json={"command": ["true"]})
    assert r.status_code == 404
    r = api.post(f"/1.0/instances/{env['run']}/exec", json={"command": []})
    assert r.status_code == 400


# -- files ---------------------------------------------------------------------------------

def _push(api, name, path, data=b"", **headers):
    hdrs = {f"X-LXD-{k}": str(v) for k, v in headers.items()}
    return api.post(f"/1.0/instances/{name}/files", params={"path": path}, content=data,
                    headers=hdrs)


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024 + 17])
def test_file_binary_push_pull_exact(env, api, size):
    data = os.urandom(size)
    assert _push(api, env["run"], "/root/blob", data, mode="0640", uid=5, gid=6
                 ).status_code == 200
    r = api.get(f"/1.0/instances/{env['run']}/files", params={"path": "/root/blob"})
    assert r.status_code == 200 and r.content == data
    assert (r.headers["X-LXD-mode"], r.headers["X-LXD-uid"], r.headers["X-LXD-gid"],
            r.headers["X-LXD-type"]) == ("0640", "5", "6", "file")


def test_file_append_dir_listing_symlink_delete(env, api):
    n = env["run"]
    assert _push(api, n, "/tmp/d", type="directory", mode="0700").status_code == 200
    assert _push(api, n, "/tmp/d/a", b"one\n").status_code == 200
    assert _push(api, n, "/tmp/d/a", b"two\n", write="append").status_code == 200
    assert api.get(f"/1.0/instances/{n}/files", params={"path": "/tmp/d/a"}).content \
        == b"one\ntwo\n"
    assert _push(api, n, "/tmp/d/l", b"a", type="symlink").status_code == 200
    r = api.get(f"/1.0/instances/{n}/files", params={"path": "/tmp/d"})
    assert r.headers["X-LXD-type"] == "directory" and r.headers["X-LXD-mode"] == "0700"
    assert r.json()["metadata"] == ["a", "l"]
    r = api.get(f"/1.0/instances/{n}/files", params={"path": "/tmp/d/l"})
    assert r.headers["X-LXD-type"] == "symlink" and r.content == b"a"
    # an existing directory is left alone (as LXD): /tmp keeps its sticky mode
    assert _push(api, n, "/tmp", type="directory", mode="0755").status_code == 200
    assert api.get(f"/1.0/instances/{n}/files", params={"path": "/tmp"}
                   ).headers["X-LXD-mode"] == "1777"
    for p in ("/tmp/d/l", "/tmp/d/a", "/tmp/d"):
        assert api.delete(f"/1.0/instances/{n}/files", params={"path": p}).status_code == 200
    assert api.get(f"/1.0/instances/{n}/files", params={"path": "/tmp/d"}).status_code == 404


def test_file_escapes_refused(env, api):
    n, outside = env["run"], env["outside"]
    r = _push(api, n, f"/../../../../{outside}/x", b"evil")
    assert r.status_code in (400, 403)
    # a link planted in the container pointing "out" resolves inside the container's root
    assert _push(api, n, "/tmp/esc", str(outside).encode(), type="symlink").status_code \
        == 200
    _push(api, n, "/tmp/esc/x", b"evil")
    assert list(outside.iterdir()) == []
    assert _push(api, n, "/tmp/up", b"../../../../../..", type="symlink").status_code == 200
    r = _push(api, n, f"/tmp/up/{outside}/y", b"evil")
    assert list(outside.iterdir()) == []
    assert api.get(f"/1.0/instances/{n}/files", params={"path": "/../../etc/shadow"}
                   ).status_code in (400, 403, 404)
    assert api.get(f"/1.0/instances/{n}/files").status_code == 400


# -- console log ---------------------------------------------------------------------------

async def test_console_log_show_and_clear(env, api, stack):
    n = env["run"]
    api.delete(f"/1.0/instances/{n}/console")
    final, _, err = await ws_exec(stack, n, ["sh", "-c", "echo console-marker > /dev/console"])
    assert final["metadata"]["return"] == 0, err
    wait_for(lambda: b"console-marker" in api.get(f"/1.0/instances/{n}/console").content,
             10, what="the console log")
    assert api.delete(f"/1.0/instances/{n}/console").status_code == 200
    assert b"console-marker" not in api.get(f"/1.0/instances/{n}/console").content


# -- the corral CLI --------------------------------------------------------------------------

def corral(stack, *args, stdin: bytes | None = None):
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, input=stdin,
                          capture_output=True, timeout=60)


def test_cli_exec_and_files(env, stack, tmp_path):
    n = env["run"]
    r = corral(stack, "exec", n, "--env", "A=1", "--", "sh", "-c",
               "cat; echo $A; echo e >&2; exit 9", stdin=b"in\n")
    assert r.returncode == 9 and r.stdout == b"in\n1\n" and r.stderr == b"e\n"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    assert corral(stack, "file", "push", "-p", "--mode", "0600", str(src),
                  f"{n}/root/x/y/src.bin").returncode == 0
    r = corral(stack, "file", "pull", f"{n}/root/x/y/src.bin", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert (tmp_path / "back").stat().st_mode & 0o777 == 0o600
    assert corral(stack, "file", "delete", f"{n}/root/x/y/src.bin").returncode == 0
    r = corral(stack, "file", "pull", f"{n}/root/x/y/src.bin", str(tmp_path / "gone"))
    assert r.returncode == 1 and r.stderr.startswith(b"Error:")
    r = corral(stack, "console", n, "--show-log")
    assert r.returncode == 0


# -- the stock lxc client ------------------------------------------------------------------

def lxc_env(stack, tmp_path) -> dict[str, str]:
    return {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(tmp_path / "lxcconf")}


def test_stock_lxc_exec_and_files(env, stack, tmp_path):
    n, e = env["run"], lxc_env(stack, tmp_path)
    r = subprocess.run(["lxc", "exec", n, "--", "sh", "-c", "cat; exit 5"], input=b"abc",
                       env=e, capture_output=True, timeout=60)
    assert r.returncode == 5 and r.stdout == b"abc", r.stderr
    subprocess.run(["lxc", "exec", n, "--", "ip", "link", "set", "lo", "up"], env=e,
                   timeout=60)
    r = subprocess.run(["lxc", "exec", n, "--", "ip", "-4", "addr"], env=e,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and b"127.0.0.1" in r.stdout, r.stderr
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1536 * 1024))
    r = subprocess.run(["lxc", "file", "push", str(src), f"{n}/root/f.bin"], env=e,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["lxc", "file", "pull", f"{n}/root/f.bin", str(tmp_path / "g.bin")],
                       env=e, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.bin").read_bytes() == src.read_bytes()
    r = subprocess.run(["lxc", "console", n, "--show-log"], env=e, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def _read_until(fd: int, token: bytes, send: bytes, timeout: float = 30) -> bytes:
    """Write ``send`` to the terminal ``fd``, then read until ``token`` was output."""
    if send:
        os.write(fd, send)
    out, deadline = b"", time.monotonic() + timeout
    while token not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    assert token in out, out
    return out


@pytest.mark.parametrize("client", ["lxc", "corral"])
def test_interactive_shell_in_a_pty_with_ctrl_c(env, stack, tmp_path, client):
    e = lxc_env(stack, tmp_path)
    argv = ([client] if client == "lxc" else [str(BIN / "corral")]) + [
        "exec", env["run"], "--", "sh"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the client on a terminal, so it asks for a pty
        os.execvpe(argv[0], argv, e)
    out = b""
    try:
        # the remote shell's prompt first, then its answer (no fixed wait: a client slow
        # to start under load took the ^C on its own terminal, before it was raw, and
        # died of it; a line typed before the prompt is eaten by ash's line editor)
        out = _read_until(fd, b"# ", b"")
        out += _read_until(fd, b"ready2", b"echo ready$((1+1))\n")
        out += _read_until(fd, b"sleep 100", b"sleep 100\n")
        time.sleep(0.5)
        os.write(fd, b"\x03")  # ^C reaches sleep through the container's pty
        time.sleep(0.5)
        os.write(fd, b"echo $((6*7))x; exit 4\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    assert b"42x" in out, out
    assert os.WEXITSTATUS(status) == 4
