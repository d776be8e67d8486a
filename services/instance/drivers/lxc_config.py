"""Rendering the LXC config file of an instance, and shifting a rootfs when needed.

Why separate from the driver: the config is pure data from (spec, host facts), easy to
read and test; the driver only decides when to write it. NICs arrive as neutral
:class:`Nic` descriptions from the network service and become ``lxc.net.N.*`` keys here,
the only place that syntax is written.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from shared.errors import BadRequest

from ..idmap import IdMap
from ..limits import parse_bool
from ..names import split_host_name
from .base import InstanceSpec, Nic

LXC_CONF = Path("/usr/share/lxc/config")

# raw.lxc keys refused, with why. LXD 5.0's deny list (lxcValidConfig): the log file and
# syslog (LXD's, here Corral's, logs), lxc.ephemeral, process limits, and every network
# key but the per-interface addresses and gateways. Then what Corral itself manages, which
# an override would silently break: the root (the files API, delete and the idmapped
# mount use the one Corral made), the id map (file ownership is translated by it), the
# console log (the console API reads it), and whatever runs or pulls in host commands as
# root (hooks, includes): raw.lxc must not be a way to run programs on the host.
_NET_ALLOWED = re.compile(r"^lxc\.net\.\d+\.ipv[46]\.(address|gateway)$")
_DENIED: tuple[tuple[str, str], ...] = (
    ("lxc.logfile", "the container's log file is managed by Corral"),
    ("lxc.log.file", "the container's log file is managed by Corral"),
    ("lxc.syslog", "setting lxc.log.syslog is not allowed"),
    ("lxc.log.syslog", "setting lxc.log.syslog is not allowed"),
    ("lxc.ephemeral", "setting lxc.ephemeral is not allowed (use the instance's "
                      "'ephemeral' property)"),
    ("lxc.prlimit.", "process limits cannot be set through raw.lxc"),
    ("lxc.rootfs.", "the root file system is managed by Corral (devices.root)"),
    ("lxc.idmap", "the id map is managed by Corral (security.privileged)"),
    ("lxc.id_map", "the id map is managed by Corral (security.privileged)"),
    ("lxc.console.logfile", "the console log is managed by Corral"),
    ("lxc.hook.", "hooks run commands on the host as root"),
    ("lxc.include", "includes may pull in host commands (hooks) and Corral-managed keys"),
    ("lxc.network.", "only interface-specific ipv4/ipv6 lxc.net. keys are allowed"),
)


def parse_raw_lxc(raw: str) -> list[tuple[str, str]]:
    """``raw.lxc`` as (key, value) pairs, by LXD's rules (lxcParseRawLXC): blank lines and
    ``#`` comments skipped, ``key = value`` with the key lower-cased and both trimmed; a
    line without ``=`` or a refused key is a 400 naming the line."""
    out = []
    for line in raw.split("\n"):
        text = line.lstrip("\t ")
        if not text or text.startswith("#"):
            continue
        if "=" not in text:
            raise BadRequest(f"Invalid raw.lxc line {line.strip()!r}: expected 'key = value'")
        k, v = text.split("=", 1)
        k, v = k.strip(" \t\r").lower(), v.strip(" \t\r")
        if not k.startswith("lxc."):
            raise BadRequest(f"Invalid raw.lxc key {k!r}: LXC keys start with 'lxc.'")
        if k.startswith("lxc.net.") and not _NET_ALLOWED.match(k):
            raise BadRequest(f"raw.lxc: {k} is refused: only interface-specific ipv4/ipv6 "
                             "lxc.net. keys are allowed (NICs are Corral devices)")
        for prefix, why in _DENIED:
            if k == prefix or (prefix.endswith(".") and k.startswith(prefix)):
                raise BadRequest(f"raw.lxc: {k} is refused: {why}")
        out.append((k, v))
    return out


def check_raw_lxc_values(raw: str) -> None:
    """400 unless liblxc itself accepts every ``raw.lxc`` line (as LXD checks them, item
    by item, before the config is stored). Blocking: call it in a thread.

    Why: a key LXC does not know makes LXC refuse the whole config file, so a stored bad
    line would make that container unloadable. It is tried on a scratch container in an
    empty temporary lxcpath, which nothing else reads.
    """
    pairs = parse_raw_lxc(raw)
    if not pairs:
        return
    import _lxc  # python-lxc's C module: its set_config_item says whether LXC took it
    import lxc

    with tempfile.TemporaryDirectory(prefix="corral-rawlxc-") as tmp:
        scratch = lxc.Container("raw-lxc-check", tmp)
        for k, v in pairs:
            if not _lxc.Container.set_config_item(scratch, k, v):
                raise BadRequest(f"raw.lxc: LXC refuses {k} = {v}: not a key or value "
                                 "this LXC version accepts (see lxc.container.conf(5))")


# LXC's helpers for writing an id map on an unprivileged user's behalf (shadow's).
ID_MAP_TOOLS = ("newuidmap", "newgidmap")


def start_environment(environ: dict[str, str]) -> dict[str, str]:
    """``lxc-start``'s environment: ``environ`` with PATH cleared of the id-map tools.

    Why: liblxc writes an unprivileged container's uid and gid maps through newuidmap and
    newgidmap whenever it finds them on PATH (setuid), even running as root, which may
    write ``/proc/<pid>/uid_map`` itself: ``sh -c newuidmap ...`` then ``sh -c newgidmap
    ...``, four execs in the middle of every start, ~40% of ``lxc-start``'s time measured
    here (median 215 -> 128 ms on a loaded machine). Without them on PATH it writes the
    maps directly. Nothing is lost: the tools only check that a map lies within the
    caller's /etc/subuid range, and Corral's map is root's range from there (idmap.py).
    The directories left out hold other programs LXC could look up by name: the only
    commands it runs at start are hooks, which Corral writes with absolute paths (raw.lxc
    may not add any), and ``/bin/sh`` by its path. liblxc 5.0 logs a warning at each
    start that the tools are missing (``lxc.log``); the driver's idmapped-mount fallback
    therefore looks at error lines only.
    """
    keep = [d for d in environ.get("PATH", os.defpath).split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, t)) for t in ID_MAP_TOOLS)]
    return {**environ, "PATH": os.pathsep.join(keep)}


def apparmor_enabled(root: Path = Path("/")) -> bool:
    """Detected, never assumed: this kernel may have no AppArmor (``root``: for tests)."""
    try:
        return (root / "sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def privileged(config: dict[str, str]) -> bool:
    return parse_bool("security.privileged", config.get("security.privileged", "false"))


def nesting(config: dict[str, str]) -> bool:
    return parse_bool("security.nesting", config.get("security.nesting", "false"))


def nic_lines(index: int, nic: Nic) -> list[str]:
    """``lxc.net.<index>.*`` lines for one NIC: LXC makes the veth (or macvlan) itself."""
    p = f"lxc.net.{index}"
    if nic.nictype == "macvlan":
        out = [f"{p}.type = macvlan", f"{p}.macvlan.mode = bridge", f"{p}.link = {nic.parent}"]
    else:
        out = [f"{p}.type = veth"]
        if nic.host_name:
            out.append(f"{p}.veth.pair = {nic.host_name}")
        if nic.nictype == "bridged":
            out.append(f"{p}.link = {nic.bridge or nic.parent}")
        elif nic.nictype == "routed":  # LXC routes the addresses to the veth, proxies the gw
            out.append(f"{p}.veth.mode = router")
            out += [f"{p}.ipv4.address = {a}" for a in nic.ipv4_addresses]
            out += [f"{p}.ipv6.address = {a}" for a in nic.ipv6_addresses]
            if nic.ipv4_gateway:
                out.append(f"{p}.ipv4.gateway = {nic.ipv4_gateway}")
            if nic.ipv6_gateway:
                out.append(f"{p}.ipv6.gateway = {nic.ipv6_gateway}")
    out += [f"{p}.flags = up", f"{p}.name = {nic.name}"]
    if nic.hwaddr:
        out.append(f"{p}.hwaddr = {nic.hwaddr}")
    if nic.mtu:
        out.append(f"{p}.mtu = {nic.mtu}")
    return out


def render(spec: InstanceSpec, lxcpath: Path, rootfs: Path, idmap: IdMap | None,
           idmapped: bool) -> str:
    """The whole ``config`` file. ``idmap`` is None for privileged containers.

    Extra disk devices are not ``lxc.mount.entry`` lines: LXC mounts those as the
    container's root inside its user namespace, which cannot reach a source below a
    directory closed to others (Permission denied). The driver mounts them from the host
    side instead, in LXC's start-host hook (before init), as it hot-plugs them (see
    disk_mounts)."""
    d = lxcpath / spec.name
    lines = [f"lxc.include = {LXC_CONF / 'common.conf'}"]
    if idmap is not None:
        lines.append(f"lxc.include = {LXC_CONF / 'userns.conf'}")
    if nesting(spec.config):
        lines.append(f"lxc.include = {LXC_CONF / 'nesting.conf'}")
    if apparmor_enabled():
        lines.append("lxc.apparmor.profile = generated")
        if nesting(spec.config):
            lines.append("lxc.apparmor.allow_nesting = 1")
    else:
        lines.append("lxc.apparmor.profile = unconfined")
    lines += [
        f"lxc.rootfs.path = dir:{rootfs}",
        f"lxc.uts.name = {split_host_name(spec.name)[1]}",  # p1_web is "web" inside
        f"lxc.log.file = {d / 'lxc.log'}",
        "lxc.log.level = warn",
        f"lxc.console.logfile = {d / 'console.log'}",
        "lxc.console.size = 1MB",
        "lxc.tty.max = 0",
        "lxc.pty.max = 1024",
        "lxc.autodev = 1",
        "lxc.signal.halt = SIGPWR",
        "lxc.mount.auto =",  # replace common.conf's choice with ours
        # common.conf pulls in lxcfs's hooks when Debian's lxcfs package is installed; Corral
        # does not run lxcfs, and its post-stop hook sleeps 0.5 s on every stop (a third of
        # LXD's stop time). An empty value clears a hook list.
        "lxc.hook.mount =",
        "lxc.hook.post-stop =",
        "lxc.mount.auto = proc:rw sys:rw cgroup:mixed" if nesting(spec.config)
        else "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed",
    ]
    if idmap is not None:
        lines += [f"lxc.idmap = {line}" for line in idmap.lxc_lines()]
        if idmapped:
            lines.append("lxc.rootfs.options = idmap=container")
    nics = [ln for i, nic in enumerate(spec.nics) for ln in nic_lines(i, nic)]
    lines += nics or ["lxc.net.0.type = empty"]
    lines += [f"{k} = {v}" for k, v in parse_raw_lxc(spec.config.get("raw.lxc", ""))]
    return "\n".join(lines) + "\n"


def shift_rootfs(root: Path, idmap: IdMap) -> None:
    """chown every file by the map (the fallback when idmapped mounts fail).

    chown clears setuid/setgid bits, so the mode is put back afterwards.
    """
    def shift(path: str, st: os.stat_result) -> None:
        os.lchown(path, idmap.uid_to_host(st.st_uid), idmap.gid_to_host(st.st_gid))
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))

    shift(str(root), os.lstat(root))
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(top, n)
            shift(p, os.lstat(p))
