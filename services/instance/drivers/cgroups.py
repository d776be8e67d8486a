"""Where a container's cgroups live and which cgroup version each controller uses.

Why: hosts differ (pure v2, or hybrid like this one where LXC uses v1 controllers and
silently ignores ``lxc.cgroup2.*``). We detect from the host's mounts instead of assuming,
and read usage straight from cgroup files so ``state()`` never spawns or attaches.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from shared.errors import Internal


@functools.lru_cache(maxsize=1)
def hierarchies() -> tuple[dict[str, Path], Path | None]:
    """(v1 controller -> mountpoint, unified v2 mountpoint or None) from mountinfo."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or len(fields) < 5:
            continue
        mnt, fstype, opts = Path(fields[4]), rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mnt
        elif fstype == "cgroup":
            for opt in opts:
                if opt.startswith("name="):
                    v1.setdefault(opt, mnt)
                elif opt in _KNOWN_V1:
                    v1.setdefault(opt, mnt)
    return v1, v2


_KNOWN_V1 = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
             "net_cls", "net_prio", "hugetlb", "perf_event", "rdma", "misc"}


def version_of(controller: str) -> int:
    """1 if LXC will use a v1 hierarchy for this controller here, else 2."""
    v1, v2 = hierarchies()
    if controller in v1:
        return 1
    if v2 is not None:
        return 2
    raise Internal(f"cgroup controller {controller!r} is not mounted on this host")


def limits_version() -> int:
    """The version used for limits; memory decides (it is the one that must work)."""
    return version_of("memory")


def _read(path: str) -> bytes:
    """A small kernel file's bytes (cgroup and /proc files are one read).

    Why not ``Path.read_text``: a text wrapper and a Path per file cost ~0.2 ms of a
    container's state, and ``recursion=2`` reads a dozen files per running container.
    Raises OSError (FileNotFoundError once the process or cgroup is gone) as it did."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        while len(data) % 65536 == 0 and data:  # a long one (cgroup.procs): the rest
            more = os.read(fd, 65536)
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


# (/proc/<pid>/cgroup's bytes, container name) -> its payload directories: the same
# bytes always give the same directories, so a list parses each container's once per boot.
_PARSED: dict[tuple[bytes, str], dict[str, Path]] = {}
_PARSED_MAX = 1024


def _parse(text: str, name: str) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    v1, v2 = hierarchies()
    marker = f"lxc.payload.{name}"
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        # init may have moved itself below the payload cgroup; count the whole payload.
        parts = path.split("/")
        if marker in parts:
            path = "/".join(parts[: parts.index(marker) + 1])
        rel = path.lstrip("/")
        if ctrls == "" and v2 is not None:
            dirs["unified"] = v2 / rel
        for c in ctrls.split(","):
            if c in v1:
                dirs[c] = v1[c] / rel
    return dirs


class CgroupPaths:
    """The payload cgroup directories of one running container, found from its init pid.

    /proc/<pid>/cgroup is read every time (FileNotFoundError tells the caller the
    container stopped while it looked); its parse is reused for the same bytes."""

    def __init__(self, pid: int, name: str) -> None:
        raw = _read(f"/proc/{pid}/cgroup")
        dirs = _PARSED.get((raw, name))
        if dirs is None:
            dirs = _parse(raw.decode(), name)
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[(raw, name)] = dirs
        self.dirs: dict[str, Path] = dirs  # shared between instances: read only

    def path(self, controller: str, name: str) -> Path | None:
        d = self.dirs.get(controller) or self.dirs.get("unified")
        return d / name if d else None

    def _file(self, controller: str, name: str) -> str | None:
        d = self.dirs.get(controller) or self.dirs.get("unified")
        return f"{d}/{name}" if d else None  # str(Path) is kept by the Path: no parse

    def read_int(self, controller: str, name: str) -> int | None:
        p = self._file(controller, name)
        try:
            return int(_read(p).split()[0]) if p else None
        except (OSError, ValueError, IndexError):
            return None

    def read_kv(self, controller: str, name: str) -> dict[str, int]:
        p = self._file(controller, name)
        out: dict[str, int] = {}
        try:
            for line in _read(p).decode().splitlines() if p else []:
                k, _, v = line.partition(" ")
                out[k] = int(v) if v.strip().lstrip("-").isdigit() else 0
        except OSError:
            pass
        return out

    def usage(self) -> dict:
        """LXD's cpu/memory/processes numbers, from whichever version holds each."""
        if "cpuacct" in self.dirs:
            cpu = self.read_int("cpuacct", "cpuacct.usage") or 0
        else:
            cpu = self.read_kv("cpu", "cpu.stat").get("usage_usec", 0) * 1000
        if "memory" in self.dirs:
            mem = self.read_int("memory", "memory.usage_in_bytes") or 0
            peak = self.read_int("memory", "memory.max_usage_in_bytes") or 0
            memsw = self.read_int("memory", "memory.memsw.usage_in_bytes")
            memsw_peak = self.read_int("memory", "memory.memsw.max_usage_in_bytes")
            swap = max(0, (memsw or mem) - mem)
            swap_peak = max(0, (memsw_peak or peak) - peak)
        else:
            mem = self.read_int("memory", "memory.current") or 0
            peak = self.read_int("memory", "memory.peak") or 0
            swap = self.read_int("memory", "memory.swap.current") or 0
            swap_peak = self.read_int("memory", "memory.swap.peak") or 0
        procs = self.read_int("pids", "pids.current")
        if procs is None:
            p = self._file("pids", "cgroup.procs")
            try:
                procs = len(_read(p).split()) if p else 0
            except OSError:
                procs = 0
        return {"cpu": {"usage": cpu},
                "memory": {"usage": mem, "usage_peak": peak, "swap_usage": swap,
                           "swap_usage_peak": swap_peak},
                "processes": procs}


def is_frozen(name: str) -> bool | None:
    """Whether a running container's payload cgroup is frozen; None when unreadable."""
    v1, v2 = hierarchies()
    try:
        if "freezer" in v1:
            state = _read(f"{v1['freezer']}/lxc.payload.{name}/freezer.state")
            return state.strip() != b"THAWED"
        if v2 is not None:
            return _read(f"{v2}/lxc.payload.{name}/cgroup.freeze").strip() == b"1"
    except OSError:
        return None
    return None


def remove_leftovers(name: str, wait: float = 0.0) -> None:
    """rmdir the empty ``lxc.monitor.<name>[-N]``/``lxc.payload.<name>[-N]`` cgroups.

    Why: LXC's monitor cannot remove the cgroup it sits in when it exits, so each start
    leaves one behind per hierarchy (and the next start picks a ``-N`` suffix).
    rmdir only succeeds on an empty cgroup, so a live container is never touched.
    ``wait`` gives a monitor that is still exiting that long to leave.
    """
    deadline = time.monotonic() + wait
    while _remove_once(name) and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_once(name: str) -> bool:
    """One pass; True when something is still busy."""
    busy = False
    v1, v2 = hierarchies()
    for mnt in {*v1.values(), *([v2] if v2 else [])}:
        for kind in ("monitor", "payload"):
            prefix = f"lxc.{kind}.{name}"
            try:
                entries = [e for e in os.listdir(mnt) if e == prefix or
                           (e.startswith(prefix + "-") and e[len(prefix) + 1:].isdigit())]
            except OSError:
                continue
            for e in entries:
                try:
                    os.rmdir(mnt / e)
                except FileNotFoundError:
                    pass
                except OSError:
                    busy = True
    return busy


def own_cgroups() -> dict[Path, str]:
    """{hierarchy mountpoint: our cgroup path in it}, to undo LXC moving us."""
    v1, v2 = hierarchies()
    out: dict[Path, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls == "" and v2 is not None:
            out[v2] = path
        for c in ctrls.split(","):
            if c in v1:
                out[v1[c]] = path
    return out


def return_to(saved: dict[Path, str]) -> None:
    """Move this process back where it was before ``Container.start``.

    Why: liblxc 5.0 records the caller's pid as the monitor pid before it daemonizes and
    puts the *caller* into ``lxc.monitor.<name>``. Left there, the service would sit in
    (and pin) the cgroup of the last container it started.
    """
    now = own_cgroups()
    for mnt, path in saved.items():
        if now.get(mnt) != path:
            try:
                (mnt / path.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
            except OSError:
                pass
