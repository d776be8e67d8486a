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
import re
import signal
import subprocess
import time
from ipaddress import IPv6Address
from pathlib import Path

from shared.errors import Internal

from . import bridge_config as bc

DNSMASQ = "/usr/sbin/dnsmasq"
PID_FILE = "dnsmasq.pid"
LEASES_FILE = "dnsmasq.leases"
HOSTS_DIR = "dnsmasq.hosts"
LOG_FILE = "dnsmasq.log"
ERR_FILE = "dnsmasq.stderr"
RAW_FILE = "dnsmasq.raw"
_HOST_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
OWNER = "# corral owner: "  # a host entry's first line: "<project>/<instance>"
RA_INTERVAL = 600  # seconds between unsolicited RAs (dnsmasq's default)

# dnsmasq processes this process started, so their exit status gets collected.
_CHILDREN: dict[int, subprocess.Popen] = {}


def args(bridge: str, config: dict[str, str], state_dir: Path) -> list[str]:
    """dnsmasq's command line for a bridge with this (resolved) config.

    IPv4: DHCP ranges as LXD. IPv6: router advertisements (``--enable-ra``) and one of
    SLAAC with stateless DHCPv6 (``ra-stateless``), stateful DHCPv6 from ranges
    (``ipv6.dhcp.stateful``), or RA only (``ipv6.dhcp=false``). A bridge that does not
    route IPv6 (``ipv6.routing=false``) advertises itself with router lifetime 0, so
    instances learn the prefix but get no default route through it.
    """
    gw, gw6 = bc.gateway(config), bc.gateway6(config)
    argv = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--strict-order",
        "--bind-interfaces", "--except-interface=lo", "--no-ping", "--no-resolv",
        "--no-hosts", f"--interface={bridge}",
    ]
    argv += [f"--listen-address={ip.ip}" for ip in (gw, gw6) if ip is not None]
    argv += [f"--pid-file={state_dir / PID_FILE}", f"--log-facility={state_dir / LOG_FILE}"]
    if bc.setting(config, "dns.mode") == "none":
        argv.append("--dhcp-ignore-names")  # no DNS records for instances
    else:
        domain = bc.setting(config, "dns.domain")
        argv += [f"--domain={domain}", f"--local=/{domain}/", "--domain-needed"]
    dhcp4 = gw is not None and bc.flag(config, "ipv4.dhcp")
    dhcp6 = gw6 is not None and bc.flag(config, "ipv6.dhcp")
    if dhcp4 or dhcp6:
        argv += [
            f"--dhcp-leasefile={state_dir / LEASES_FILE}", "--dhcp-authoritative",
            "--dhcp-no-override", f"--dhcp-hostsdir={state_dir / HOSTS_DIR}",
        ]
    if dhcp4:
        assert gw is not None
        expiry = bc.expiry_seconds(bc.setting(config, "ipv4.dhcp.expiry"))
        lease = "infinite" if expiry is None else f"{expiry}s"
        for start, end in bc.dhcp_ranges(config):
            argv.append(f"--dhcp-range={start},{end},{gw.netmask},{lease}")
        if "bridge.mtu" in config:
            argv.append(f"--dhcp-option-force=26,{config['bridge.mtu']}")
        if "ipv4.dhcp.gateway" in config:
            argv.append(f"--dhcp-option-force=3,{config['ipv4.dhcp.gateway']}")
        if "dns.search" in config:
            search = ",".join(d.strip() for d in config["dns.search"].split(","))
            argv.append(f"--dhcp-option-force=119,{search}")
    if gw6 is not None:
        argv.append("--enable-ra")
        if not dhcp6:
            argv.append(f"--dhcp-range=::,constructor:{bridge},ra-only")
        elif bc.flag(config, "ipv6.dhcp.stateful"):
            expiry = bc.expiry_seconds(bc.setting(config, "ipv6.dhcp.expiry"),
                                       "ipv6.dhcp.expiry")
            lease = "infinite" if expiry is None else f"{expiry}s"
            for start, end in bc.dhcp6_ranges(config):
                argv.append(f"--dhcp-range={start},{end},{gw6.network.prefixlen},{lease}")
        else:
            argv.append(f"--dhcp-range=::,constructor:{bridge},ra-stateless,ra-names")
        if not bc.flag(config, "ipv6.routing"):
            argv.append(f"--ra-param={bridge},{RA_INTERVAL},0")
    if config.get("raw.dnsmasq"):
        argv.append(f"--conf-file={state_dir / RAW_FILE}")
    return argv


def write_raw(config: dict[str, str], state_dir: Path) -> None:
    """``raw.dnsmasq`` goes to a file of its own that dnsmasq reads (as LXD does)."""
    path = state_dir / RAW_FILE
    if config.get("raw.dnsmasq"):
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(config["raw.dnsmasq"].rstrip("\n") + "\n")
    else:
        path.unlink(missing_ok=True)


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


def mac_from_duid(duid: str) -> str:
    """The MAC inside a DUID-LLT (type 1) or DUID-LL (type 3) of Ethernet (hw type 1),
    as dnsmasq writes it (``00:01:00:01:<time>:<mac>``); "" for other DUIDs."""
    parts = duid.lower().split(":")
    if len(parts) == 14 and parts[:4] == ["00", "01", "00", "01"]:
        return ":".join(parts[8:])
    if len(parts) == 10 and parts[:4] == ["00", "03", "00", "01"]:
        return ":".join(parts[4:])
    return ""


def _lease_mac(fields: list[str]) -> str:
    if ":" in fields[2]:  # IPv6: the MAC inside the client's DUID, if any
        return mac_from_duid(fields[4]) if len(fields) > 4 else ""
    return fields[1].lower()


def remove_leases(state_dir: Path, hwaddrs: set[str]) -> int:
    """Drop the lease lines (IPv4 and IPv6) of these MACs from the lease file, written
    atomically; returns how many went. Only while dnsmasq is stopped: it keeps its leases
    in memory and writes them all back on its next change."""
    path = state_dir / LEASES_FILE
    macs = {m.lower() for m in hwaddrs}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    keep = [line for line in lines
            if len(line.split()) < 4 or line.split()[0] == "duid"
            or _lease_mac(line.split()) not in macs]
    if len(keep) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, path)
    return len(lines) - len(keep)


def has_leases(state_dir: Path, hwaddrs: set[str]) -> bool:
    macs = {m.lower() for m in hwaddrs}
    return any(lease["hwaddr"] in macs for lease in read_leases(state_dir))


def read_leases(state_dir: Path) -> list[dict[str, str]]:
    """dnsmasq's lease file: IPv4 lines ``expiry mac ip hostname clientid``, then after a
    ``duid <server-duid>`` line, IPv6 lines ``expiry iaid ip hostname client-duid``."""
    try:
        lines = (state_dir / LEASES_FILE).read_text().splitlines()
    except OSError:
        return []
    return parse_leases(lines)


def parse_leases(lines: list[str]) -> list[dict[str, str]]:
    """The leases in these lines of a lease file (see ``read_leases``)."""
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":
            continue  # malformed, or the server's own DUID
        v6 = ":" in fields[2]
        hwaddr = mac_from_duid(fields[4]) if v6 and len(fields) > 4 else fields[1].lower()
        out.append({"expiry": fields[0], "hwaddr": "" if v6 and not hwaddr else hwaddr,
                    "address": fields[2], "hostname": "" if fields[3] == "*" else fields[3],
                    "family": "inet6" if v6 else "inet"})
    return out


def read_hosts(state_dir: Path) -> list[dict[str, str]]:
    """The host entries (static leases) in ``--dhcp-hostsdir``, one file per MAC:
    ``{hwaddr, ipv4, ipv6, hostname}``."""
    out = []
    try:
        files = sorted((state_dir / HOSTS_DIR).iterdir())
    except OSError:
        return []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        owner = next((ln[len(OWNER):].strip() for ln in lines if ln.startswith(OWNER)), "")
        line = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")), "")
        parts = line.split(",")
        if not parts or not _HOST_MAC.match(parts[0].lower()):
            continue
        entry = {"hwaddr": parts[0].lower(), "ipv4": "", "ipv6": "", "hostname": ""}
        if owner:
            entry["owner"] = owner
        for part in parts[1:]:
            if part.startswith("[") and part.endswith("]"):
                entry["ipv6"] = str(IPv6Address(part[1:-1]))
            elif re.fullmatch(r"\d+\.\d+\.\d+\.\d+", part):
                entry["ipv4"] = part
            else:
                entry["hostname"] = part
        out.append(entry)
    return out
