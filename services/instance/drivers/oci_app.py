"""Application containers: an instance made from an OCI image runs the image's process.

Why a separate module: the LXC driver treats every container alike; only the start
differs. An instance is an application container when its volume holds the OCI runtime
``config.json`` beside ``rootfs/`` (what the OCI fetcher puts in the image's metadata
tarball, Incus's layout); nothing else marks it, so copies, moves and backups of the
volume stay application containers.

How it runs: ``lxc-execute`` (LXC's application-container mode: LXC's static
``init.lxc`` is PID 1, forwards signals and reaps, and the container stops when the
process exits) started detached from the service, in a session of its own, with the
process's stdout/stderr appended to the console log (``lxc console --show-log``). A
shell around it writes the exit status to ``oci-exit-code`` in the container's dir:
LXC's daemonized start loses it. The command, cwd, uid/gid and environment come from
the image (``process`` of config.json), ``oci.entrypoint``/``oci.cwd``/``oci.uid``/
``oci.gid`` override them, ``environment.*`` keys add to the environment.

Networking: an application has no DHCP client, so each NIC on a host bridge gets a
static IPv4 address set by LXC, with the bridge's address as gateway. The NIC device's
``ipv4.address`` (LXD's static lease: dnsmasq reserves it for this MAC) is taken when
set; otherwise one is chosen from local facts only: the NIC's MAC hashed into the upper
half of the bridge's subnet, skipping the bridge's own address and any address the
host's neighbour table shows in use on that bridge. (dnsmasq does not know that choice:
set ``ipv4.address`` on the NIC for an address no lease can ever take.)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from shared.errors import BadRequest

from ..names import split_host_name
from .base import Nic

CONFIG = "config.json"  # the OCI runtime config, at the root of the instance's volume
EXIT_CODE = "oci-exit-code"
WRAPPER_PID = "oci-wrapper.pid"
KEYS = ("oci.entrypoint", "oci.cwd", "oci.uid", "oci.gid")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def is_app(rootfs: Path) -> bool:
    """Whether the container whose root is ``rootfs`` came from an OCI image."""
    return (Path(rootfs).parent / CONFIG).is_file()


def check_keys(config: dict[str, str]) -> None:
    """400 for a bad ``oci.*`` value (no host access: the create/update checks)."""
    for k, v in config.items():
        if not k.startswith("oci.") or v == "":
            continue
        if k not in KEYS:
            raise BadRequest(f"Unknown configuration key: {k} (OCI keys: {', '.join(KEYS)})")
        if k in ("oci.uid", "oci.gid") and not (v.isdigit() and int(v) < 2**32 - 1):
            raise BadRequest(f"Invalid value {v!r} for {k}: expected a numeric id")
        if k == "oci.cwd" and not v.startswith("/"):
            raise BadRequest(f"Invalid value {v!r} for oci.cwd: expected an absolute path")
        if k == "oci.entrypoint":
            try:
                if not shlex.split(v):
                    raise ValueError("empty")
            except ValueError as e:
                raise BadRequest(f"Invalid value for oci.entrypoint: {e} (a command line "
                                 "quoted as a shell would)") from None
        if "\n" in v or "\0" in v:
            raise BadRequest(f"Invalid value for {k}: no newlines")


def process(rootfs: Path, config: dict[str, str]) -> dict[str, Any]:
    """The process to run: the image's, with the instance's overrides applied."""
    try:
        doc = json.loads((Path(rootfs).parent / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise BadRequest(f"The application container's OCI config is unreadable: {e}") \
            from None
    proc = doc.get("process") or {}
    user = proc.get("user") or {}
    out: dict[str, Any] = {
        "args": [str(a) for a in proc.get("args") or []],
        "cwd": str(proc.get("cwd") or "/"), "uid": int(user.get("uid") or 0),
        "gid": int(user.get("gid") or 0),
        "env": dict(str(e).split("=", 1) for e in proc.get("env") or [] if "=" in str(e))}
    if config.get("oci.entrypoint"):
        out["args"] = shlex.split(config["oci.entrypoint"])
    if config.get("oci.cwd"):
        out["cwd"] = config["oci.cwd"]
    if config.get("oci.uid"):
        out["uid"] = int(config["oci.uid"])
    if config.get("oci.gid"):
        out["gid"] = int(config["oci.gid"])
    out["env"].setdefault("PATH", DEFAULT_PATH)
    out["env"].update({k.removeprefix("environment."): v for k, v in config.items()
                       if k.startswith("environment.")})
    if not out["args"]:
        raise BadRequest("The OCI image has no entrypoint or command: set oci.entrypoint")
    return out


def config_lines(proc: dict[str, Any], nics: list[Nic],
                 devices: dict[str, dict[str, str]] | None = None,
                 volume: Path | None = None, name: str = "") -> list[str]:
    """LXC config lines of an application container (appended to the rendered config).
    With ``volume``: its /etc/hosts, /etc/hostname and /etc/resolv.conf too (see
    :func:`network_files`)."""
    lines = [f"lxc.init.cwd = {proc['cwd']}", f"lxc.init.uid = {proc['uid']}",
             f"lxc.init.gid = {proc['gid']}",
             # A plain app binds low ports as any user, as in Incus.
             "lxc.sysctl.net.ipv4.ip_unprivileged_port_start = 0",
             # No init mounts /run: an empty tmpfs, as a runtime gives it.
             "lxc.mount.entry = none run tmpfs rw,nosuid,nodev,mode=755,create=dir,optional"]
    for k, v in proc["env"].items():
        if "\n" in k + v or "=" in k or not k:
            raise BadRequest(f"Invalid environment variable {k!r} for the application")
        lines.append(f"lxc.environment = {k}={v}")
    nic_devs = [d for _n, d in sorted((devices or {}).items()) if d.get("type") == "nic"]
    gateway = ""
    for i, nic in enumerate(nics):
        wanted = nic_devs[i].get("ipv4.address", "") if i < len(nic_devs) else ""
        addr = static_address(nic, wanted)
        if addr:
            lines.append(f"lxc.net.{i}.ipv4.address = {addr[0]}")
            if not gateway:  # one default route: through the first NIC with an address
                gateway = addr[1]
                lines.append(f"lxc.net.{i}.ipv4.gateway = {gateway}")
    if volume is not None:
        lines += network_files(Path(volume), split_host_name(name)[1] if name else "",
                               gateway)
    return lines


NET_DIR = "oci-network"  # in the volume, beside config.json: never inside the rootfs


def network_files(volume: Path, hostname: str, nameserver: str) -> list[str]:
    """Write the app's hosts, hostname and resolv.conf (the bridge's dnsmasq as its DNS
    server) beside its rootfs, and bind them over the image's, as a container runtime
    does: the image's own files stay untouched. Lines for the LXC config."""
    d = volume / NET_DIR
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)  # the container's root (an unmapped id) must read them
    files = {"hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                      + (f"127.0.1.1\t{hostname}\n" if hostname else ""),
             "hostname": f"{hostname}\n" if hostname else "",
             "resolv.conf": (f"nameserver {nameserver}\n" if nameserver else "")
                            + "options edns0\n"}
    lines = []
    for fname, text in files.items():
        if not text:
            continue
        tmp = d / f".{fname}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / fname)
        lines.append(f"lxc.mount.entry = {d / fname} etc/{fname} none "
                     "bind,ro,create=file,optional 0 0")
    return lines


def bridge_ipv4(bridge: str) -> ipaddress.IPv4Interface | None:
    """The bridge's first IPv4 address with its prefix, from the host (None: none)."""
    try:
        res = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", bridge],
                             capture_output=True, text=True, timeout=5)
        for link in json.loads(res.stdout or "[]"):
            for a in link.get("addr_info") or []:
                return ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None
    return None


def bridge_neighbours(bridge: str) -> set[str]:
    """IPv4 addresses the host's neighbour table has seen on ``bridge`` (in use)."""
    try:
        res = subprocess.run(["ip", "-j", "-4", "neigh", "show", "dev", bridge],
                             capture_output=True, text=True, timeout=5)
        return {str(n["dst"]) for n in json.loads(res.stdout or "[]") if n.get("dst")}
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return set()


def static_address(nic: Nic, wanted: str = "") -> tuple[str, str] | None:
    """("address/prefix", "gateway") for a NIC on a bridge with IPv4, else None;
    ``wanted``: the NIC device's ``ipv4.address`` (used when inside the subnet)."""
    bridge = nic.bridge or (nic.parent if nic.nictype == "bridged" else "")
    if not bridge or not nic.hwaddr:
        return None
    gw = bridge_ipv4(bridge)
    if gw is None or gw.network.num_addresses < 8:
        return None
    net = gw.network
    if wanted and wanted != "none":
        try:
            ip = ipaddress.IPv4Address(wanted.split("/")[0])
        except ValueError:
            raise BadRequest(f"Invalid ipv4.address {wanted!r} on NIC {nic.name}") from None
        if ip not in net or ip in (gw.ip, net.network_address, net.broadcast_address):
            raise BadRequest(f"ipv4.address {wanted} of NIC {nic.name} is not a free host "
                             f"address of {bridge}'s subnet {net}")
        return f"{ip}/{net.prefixlen}", str(gw.ip)
    half = net.num_addresses // 2
    used = bridge_neighbours(bridge)
    h = int.from_bytes(hashlib.sha256(nic.hwaddr.lower().encode()).digest()[:8], "big")
    for step in range(half - 1):
        cand = net.network_address + half + (h + step) % (half - 1)
        if cand not in (gw.ip, net.broadcast_address) and str(cand) not in used:
            return f"{cand}/{net.prefixlen}", str(gw.ip)
    return None


def _resolve_in(root: Path, path: str, hops: int = 40) -> Path | None:
    """``path`` inside ``root`` as the container will see it: every symlink, absolute or
    not, resolved against ``root`` (never the host's tree); None when it does not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur[:-1]
            continue
        here = root.joinpath(*cur, part)
        if here.is_symlink():
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                cur = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(here):
            return None
        cur.append(part)
    return root.joinpath(*cur)


def find_command(rootfs: Path, argv0: str, path_env: str) -> bool:
    """Whether the app's command exists as an executable file in its rootfs (searched
    in its PATH when it has no slash), as execvp will look for it."""
    cands = [argv0] if "/" in argv0 else [f"{d or '.'}/{argv0}" for d in
                                          path_env.split(":")]
    for c in cands:
        found = _resolve_in(Path(rootfs), c if c.startswith("/") else "/" + c)
        if found is not None and found.is_file() and os.stat(found).st_mode & 0o111:
            return True
    return False


def start(lxcpath: Path, name: str, proc: dict[str, Any],
          items: list[tuple[str, str]], rootfs: Path | None = None) -> None:
    """Run the application detached (see the module doc); returns once launched. The
    caller waits for RUNNING and reads the log on failure. ``items``: config items for
    this start only (limits), passed as ``--define``."""
    d = Path(lxcpath) / name
    if rootfs is not None and not find_command(rootfs, proc["args"][0],
                                               proc["env"].get("PATH", DEFAULT_PATH)):
        # LXC's init reports a failed exec nowhere the user looks: say it now.
        raise BadRequest(f"The application's command {proc['args'][0]!r} is not an "
                         "executable file in the container (PATH "
                         f"{proc['env'].get('PATH', DEFAULT_PATH)}): fix oci.entrypoint")
    (d / EXIT_CODE).unlink(missing_ok=True)
    defines = [a for k, v in items for a in ("-s", f"{k}={v}")]
    argv = ["lxc-execute", "-n", name, "-P", str(lxcpath), "-o", str(d / "lxc.log"),
            "-l", "WARN", *defines, "--", *proc["args"]]
    # "$1": where the status goes; the rest is lxc-execute's argv, never re-parsed.
    script = 'out=$1; shift; "$@"; echo $? > "$out.tmp" && mv "$out.tmp" "$out"'
    log = os.open(d / "console.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                  0o600)
    try:
        child = subprocess.Popen(["/bin/sh", "-c", script, "sh", str(d / EXIT_CODE), *argv],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True)
    finally:
        os.close(log)
    (d / WRAPPER_PID).write_text(str(child.pid))
    # Reap it when it ends (the container may outlive this service: it is then init's).
    threading.Thread(target=child.wait, daemon=True, name=f"oci-{name}").start()


def exit_code(lxcpath: Path, name: str, settle: float = 0.0) -> int | None:
    """The application's last exit status (None: never exited since its last start).

    ``settle``: LXC says Stopped a moment before the wrapper has written the status;
    while that wrapper still lives, wait up to this long for it, so a caller that saw
    Stopped also sees the status."""
    d = Path(lxcpath) / name
    deadline = time.monotonic() + settle
    while True:
        code = _read_exit_code(d)
        if code is not None:
            return code
        if time.monotonic() >= deadline:
            return None
        if not _wrapper_alive(d):
            # It may have written the status and exited since the read above (the file
            # was seen created but still empty): read once more after its death.
            return _read_exit_code(d)
        time.sleep(0.02)


def _read_exit_code(d: Path) -> int | None:
    try:
        return int((d / EXIT_CODE).read_text().strip())
    except (OSError, ValueError):
        return None


def _wrapper_alive(d: Path) -> bool:
    """Whether the shell that will write ``d``'s exit status still runs (checked by
    its command line, so a reused PID is not taken for it)."""
    try:
        pid = int((d / WRAPPER_PID).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if cmdline:
            return str(d / EXIT_CODE).encode() in cmdline
        # Empty: a zombie, or a process still inside execve (its new arguments are not
        # mapped yet; Popen may return then): alive unless its state says it ended.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def wait_started(c: Any, lxcpath: Path, name: str, timeout: float) -> bool:
    """Until the container runs, or its application already ended (a short-lived
    command is a successful start too); False when neither happened in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.state == "RUNNING" and c.init_pid > 0:
            return True
        if exit_code(lxcpath, name) is not None:
            return True
        time.sleep(0.05)
    return False


def refuse_on_system(config: dict[str, str]) -> None:
    """``oci.*`` keys mean nothing to a system container: a 400 (Incus refuses them at
    start), never stored unused."""
    keys = sorted(k for k, v in config.items() if k.startswith("oci.") and v)
    if keys:
        raise BadRequest(f"{', '.join(keys)}: only for application containers (instances "
                         "made from an OCI image)")
