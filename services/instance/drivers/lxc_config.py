"""Rendering the LXC config file of an instance, and shifting a rootfs when needed.

Why separate from the driver: the config is pure data from (spec, host facts), easy to
read and test; the driver only decides when to write it. NICs arrive as neutral
:class:`Nic` descriptions from the network service and become ``lxc.net.N.*`` keys here,
the only place that syntax is written.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shared.errors import BadRequest

from ..idmap import IdMap
from ..limits import parse_bool
from .base import InstanceSpec, Nic

LXC_CONF = Path("/usr/share/lxc/config")


def apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
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
    out += [f"{p}.flags = up", f"{p}.name = {nic.name}"]
    if nic.hwaddr:
        out.append(f"{p}.hwaddr = {nic.hwaddr}")
    if nic.mtu:
        out.append(f"{p}.mtu = {nic.mtu}")
    return out


def render(spec: InstanceSpec, lxcpath: Path, rootfs: Path, idmap: IdMap | None,
           idmapped: bool) -> str:
    """The whole ``config`` file. ``idmap`` is None for privileged containers."""
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
        f"lxc.uts.name = {spec.name}",
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
    for ln in spec.config.get("raw.lxc", "").splitlines():
        if ln.strip() and not ln.lstrip().startswith("#"):
            if "=" not in ln:
                raise BadRequest(f"Invalid raw.lxc line {ln!r}: expected 'key = value'")
            lines.append(ln.strip())
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
