"""The forwarding processes of ``proxy`` devices: start, stop, adopt (blocking calls).

Why pid files next to the instance's definition (``<spec dir>/proxy/<device>.json``): the
forwarder outlives the instance service (its own session), so a restarted service finds
each one there, checks it is really that device's forwarder for the container's current
init (pid, process start time, command line, the device's settings), keeps it, and
replaces or removes the rest. The directory goes with the instance's definition.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from shared.errors import BadRequest

from .proxy_rules import check_proxy

MODULE = "services.instance.proxy_forward"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: -m needs it on the path
READY_TIMEOUT = 10.0
Device = Mapping[str, str]
# Maps a container uid/gid to the host's (its idmap); identity when privileged.
IdMapper = Callable[[int, int], tuple[int, int]]


def _dir(run_dir: Path) -> Path:
    return run_dir / "proxy"


def _digest(dev: Device) -> str:
    return hashlib.sha256(json.dumps(dict(dev), sort_keys=True).encode()).hexdigest()[:16]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _record(run_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((_dir(run_dir) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(rec: dict, name: str) -> bool:
    pid = rec.get("pid", 0)
    return bool(pid) and _start_time(pid) == rec.get("start") and \
        MODULE in _cmdline(pid) and name in _cmdline(pid)


def is_running(run_dir: Path, name: str, init_pid: int, dev: Device) -> bool:
    rec = _record(run_dir, name)
    return rec is not None and _alive(rec, name) and rec.get("init") == init_pid and \
        rec.get("digest") == _digest(dev)


def names(run_dir: Path) -> list[str]:
    d = _dir(run_dir)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def start(run_dir: Path, name: str, dev: Device, init_pid: int, ids: IdMapper) -> int:
    """Start device ``name``'s forwarder for the container whose init is ``init_pid``;
    returns its pid. A forwarder that cannot listen is a 400 with its reason."""
    check_proxy(name, dev)
    stop(run_dir, name)
    d = _dir(run_dir)
    d.mkdir(mode=0o700, exist_ok=True)
    uid, gid = int(dev.get("uid") or 0), int(dev.get("gid") or 0)
    if dev.get("bind", "host") == "instance":
        uid, gid = ids(uid, gid)
    argv = [sys.executable, "-m", MODULE, "--pid", str(init_pid), "--device", name,
            "--listen", dev["listen"], "--connect", dev["connect"],
            "--bind", dev.get("bind") or "host", "--uid", str(uid), "--gid", str(gid),
            "--mode", dev.get("mode") or "0644"]
    log = d / f"{name}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        why = log.read_text(errors="replace").strip().splitlines()
        reason = why[-1].removeprefix("error: ") if why else "no reason given"
        log.unlink(missing_ok=True)
        raise BadRequest(f"Device {name!r}: the proxy cannot listen on {dev['listen']}: "
                         f"{reason}")
    rec = {"pid": proc.pid, "start": _start_time(proc.pid), "init": init_pid,
           "digest": _digest(dev)}
    tmp = d / f".{name}.json"
    tmp.write_text(json.dumps(rec))
    tmp.replace(d / f"{name}.json")
    return proc.pid


def stop(run_dir: Path, name: str) -> None:
    """End device ``name``'s forwarder (only the one its pid file names) and forget it."""
    rec = _record(run_dir, name)
    if rec is not None and _alive(rec, name):
        pid = rec["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while _start_time(pid) == rec["start"] and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
        if _start_time(pid) == rec["start"]:
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
    for f in (f"{name}.json", f"{name}.log"):
        (_dir(run_dir) / f).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (adopted after a restart): its parent reaps it


def sync(run_dir: Path, init_pid: int | None, devices: Mapping[str, Device],
         ids: IdMapper) -> None:
    """Make the forwarders exactly the proxy devices of ``devices`` for a container
    running with ``init_pid`` (None: stopped, so none)."""
    wanted = {n: d for n, d in devices.items() if d.get("type") == "proxy"} \
        if init_pid else {}
    for name in names(run_dir):
        if name not in wanted or not is_running(run_dir, name, init_pid or 0, wanted[name]):
            stop(run_dir, name)
    for name, dev in sorted(wanted.items()):
        if not is_running(run_dir, name, init_pid or 0, dev):
            start(run_dir, name, dev, init_pid or 0, ids)
