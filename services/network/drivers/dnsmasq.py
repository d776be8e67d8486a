"""The dnsmasq that serves DHCP and DNS on one bridge, and nothing else.

dnsmasq runs with ``--keep-in-foreground`` in a session of its own, so it lives on after
the network service exits or is restarted (it is then init's child), while a startup
error (a busy port, a bad option) is still seen as its exit status and stderr. Its PID
lives in a file in the network's state dir; before trusting that PID (it may be stale
after a reboot, and reused by another process) we check that ``/proc/<pid>/cmdline`` is a
dnsmasq with this very pid file.

It never asks an upstream server (``--no-resolv``, no ``--server``), reads neither
/etc/hosts nor /etc/dnsmasq.conf, and answers only on the bridge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from ipaddress import IPv4Interface
from pathlib import Path

from shared.errors import Internal

from . import bridge_config as bc
from .base import parse_bool

DNSMASQ = "/usr/sbin/dnsmasq"
PID_FILE = "dnsmasq.pid"
LEASES_FILE = "dnsmasq.leases"
HOSTS_DIR = "dnsmasq.hosts"
LOG_FILE = "dnsmasq.log"
ERR_FILE = "dnsmasq.stderr"

# dnsmasq processes this process started, so their exit status gets collected.
_CHILDREN: dict[int, subprocess.Popen] = {}


def args(bridge: str, gw: IPv4Interface, config: dict[str, str], state_dir: Path) -> list[str]:
    """dnsmasq's command line for a bridge with gateway ``gw``."""
    domain = bc.setting(config, "dns.domain")
    argv = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--strict-order",
        "--bind-interfaces", "--except-interface=lo", "--no-ping", "--no-resolv",
        "--no-hosts",
        f"--interface={bridge}", f"--listen-address={gw.ip}",
        f"--pid-file={state_dir / PID_FILE}", f"--log-facility={state_dir / LOG_FILE}",
        f"--domain={domain}", f"--local=/{domain}/", "--domain-needed",
    ]
    if parse_bool("ipv4.dhcp", bc.setting(config, "ipv4.dhcp")):
        expiry = bc.expiry_seconds(bc.setting(config, "ipv4.dhcp.expiry"))
        lease = "infinite" if expiry is None else f"{expiry}s"
        for start, end in bc.dhcp_ranges(config):
            argv.append(f"--dhcp-range={start},{end},{gw.netmask},{lease}")
        argv += [
            f"--dhcp-leasefile={state_dir / LEASES_FILE}", "--dhcp-authoritative",
            "--dhcp-no-override", f"--dhcp-hostsdir={state_dir / HOSTS_DIR}",
        ]
        if "bridge.mtu" in config:
            argv.append(f"--dhcp-option-force=26,{config['bridge.mtu']}")
    return argv


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def running_pid(state_dir: Path) -> int | None:
    """The PID of this network's live dnsmasq, verified through /proc; else None."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if not argv or os.path.basename(argv[0]) != "dnsmasq" or _is_zombie(pid):
        return None
    if f"--pid-file={state_dir / PID_FILE}" not in argv:
        return None  # a recycled PID now belongs to someone else
    return pid


def start(argv: list[str], state_dir: Path) -> int:
    """Run dnsmasq in its own session and return its verified PID once it serves.

    dnsmasq binds its sockets before it writes the pid file, so a valid pid file means
    it is serving; if it exits first, its stderr (kept in a file) says why.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)  # dnsmasq drops to an unprivileged user and rereads hosts
    (state_dir / HOSTS_DIR).mkdir(exist_ok=True)
    (state_dir / LEASES_FILE).touch()
    (state_dir / PID_FILE).unlink(missing_ok=True)
    err_path = state_dir / ERR_FILE
    with open(err_path, "w") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, start_new_session=True)
        except FileNotFoundError as e:
            raise Internal(f"{argv[0]} is missing: install the Debian package dnsmasq-base") from e
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Internal(f"dnsmasq failed to start (exit {proc.returncode}): "
                           f"{err_path.read_text().strip()}")
        if running_pid(state_dir) == proc.pid:
            _CHILDREN[proc.pid] = proc
            return proc.pid
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise Internal(f"dnsmasq did not become ready within 10 s; see {err_path}")


def stop(state_dir: Path, timeout: float = 5.0) -> None:
    """Stop this network's dnsmasq by its verified PID (TERM, then KILL).

    We wait until the process is a zombie or gone, not merely until its cmdline vanishes:
    an exiting process drops its memory (cmdline reads empty) before it closes its files,
    so a new dnsmasq started in that window finds port 53 still bound.
    """
    pid = running_pid(state_dir)
    if pid is None:
        (state_dir / PID_FILE).unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_exited(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        if not _wait_exited(pid, 5.0):
            raise Internal(f"dnsmasq (pid {pid}) did not stop")
    (state_dir / PID_FILE).unlink(missing_ok=True)


def _wait_exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if _is_zombie(pid):  # also True once /proc/<pid> is gone
            return True
        time.sleep(0.02)
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if we started it (else init's job; a zombie counts as dead)."""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def read_leases(state_dir: Path) -> list[dict[str, str]]:
    """dnsmasq's lease lines: ``expiry mac ip hostname clientid``."""
    try:
        lines = (state_dir / LEASES_FILE).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or ":" in fields[2]:
            continue  # malformed, or an IPv6 lease ("duid" line)
        out.append({"expiry": fields[0], "hwaddr": fields[1].lower(), "address": fields[2],
                    "hostname": "" if fields[3] == "*" else fields[3]})
    return out
