"""LXD ``limits.*`` keys: parse, validate, and map to cgroup v1 or v2 files.

Why separate: the API layer validates config before anything touches the kernel, and the
driver needs the same parse to write ``lxc.cgroup[2].*`` lines at start and to apply
changes live. The cgroup version is a parameter: the caller detects it on the host.
"""

from __future__ import annotations

import os
import re

from shared.errors import BadRequest

LIMIT_KEYS = ("limits.cpu", "limits.cpu.allowance", "limits.cpu.priority", "limits.memory",
              "limits.memory.swap", "limits.processes")
CONTROLLER_OF = {"limits.cpu": "cpuset", "limits.cpu.allowance": "cpu",
                 "limits.cpu.priority": "cpu", "limits.memory": "memory",
                 "limits.memory.swap": "memory", "limits.processes": "pids"}

_UNITS = {"": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "EiB": 2**60,
          "PB": 10**15, "PiB": 2**50, "EB": 10**18}
_BYTES_RE = re.compile(r"^(\d+)\s*([A-Za-z]*)$")
_DURATION_RE = re.compile(r"^(\d+)(us|ms|s)$")
_US = {"us": 1, "ms": 1000, "s": 1000000}


def host_cpus() -> list[int]:
    """CPUs this process may run on; what a cpuset may name."""
    return sorted(os.sched_getaffinity(0))


def host_memory() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise BadRequest("Cannot read MemTotal from /proc/meminfo")


def parse_bytes(key: str, value: str) -> int:
    m = _BYTES_RE.match(value.strip())
    if not m or m.group(2) not in _UNITS:
        raise BadRequest(f"Invalid value {value!r} for {key}: expected a size like "
                         "'64MiB', '1GB' or a percentage like '50%'")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_cpuset(value: str, cpus: list[int]) -> list[int]:
    """``limits.cpu``: a count ("2") picks the first N CPUs; a set ("0-1,3") is explicit."""
    value = value.strip()
    if value.isdigit() and "," not in value and "-" not in value:
        n = int(value)
        if n < 1 or n > len(cpus):
            raise BadRequest(f"Invalid limits.cpu {value!r}: the host has {len(cpus)} "
                             f"CPUs, ask for 1 to {len(cpus)}")
        return cpus[:n]
    out: set[int] = set()
    for part in value.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise BadRequest(f"Invalid limits.cpu {value!r}: expected a count like '2' or "
                             "a set like '0-1,3'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BadRequest(f"Invalid limits.cpu range {part!r}: end is before start")
        out.update(range(lo, hi + 1))
    missing = sorted(out - set(cpus))
    if missing:
        raise BadRequest(f"Invalid limits.cpu {value!r}: CPU(s) {missing} do not exist "
                         f"here; available: {_fmt_set(cpus)}")
    return sorted(out)


def _fmt_set(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def parse_allowance(value: str) -> tuple[int | None, int | None]:
    """``limits.cpu.allowance`` -> (shares percent, None) or (None, (quota_us, period_us))."""
    value = value.strip()
    if value.endswith("%"):
        pct = value[:-1]
        if not pct.isdigit() or not 1 <= int(pct) <= 100:
            raise BadRequest(f"Invalid limits.cpu.allowance {value!r}: a percentage must "
                             "be 1% to 100%")
        return int(pct), None
    parts = value.split("/")
    if len(parts) == 2:
        q, p = (_DURATION_RE.match(x.strip()) for x in parts)
        if q and p:
            quota = int(q.group(1)) * _US[q.group(2)]
            period = int(p.group(1)) * _US[p.group(2)]
            if 1000 <= period <= 1000000 and quota >= 1000:
                return None, (quota, period)
    raise BadRequest(f"Invalid limits.cpu.allowance {value!r}: expected '50%' or "
                     "'25ms/100ms' (period 1ms..1s, quota at least 1ms)")


def parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise BadRequest(f"Invalid value {value!r} for {key}: expected true or false")


def validate_limits(config: dict[str, str]) -> None:
    """Raise BadRequest for any bad ``limits.*`` value (no kernel access needed)."""
    cgroup_settings(config, version=1)


def cgroup_settings(config: dict[str, str], version: int,
                    keys: tuple[str, ...] = LIMIT_KEYS) -> list[tuple[str, str]]:
    """Ordered (cgroup file, value) pairs for the ``limits.*`` keys in ``keys``.

    An unset key maps to the kernel's "no limit" value so removing a limit live works.
    Order matters for v1 memory: memsw must never be below memory.limit_in_bytes, so the
    caller applies the list in order when raising and the memsw entry first when lowering
    (see :func:`memory_order`).
    """
    out: list[tuple[str, str]] = []
    want = set(keys)
    if "limits.cpu" in want:
        v = config.get("limits.cpu", "")
        cpus = host_cpus()
        out.append(("cpuset.cpus", _fmt_set(parse_cpuset(v, cpus) if v else cpus)))
    if want & {"limits.cpu.allowance", "limits.cpu.priority"}:
        out += _cpu_settings(config, version)
    if want & {"limits.memory", "limits.memory.swap"}:
        out += _memory_settings(config, version)
    if "limits.processes" in want:
        v = config.get("limits.processes", "").strip()
        if v and (not v.isdigit() or int(v) < 1):
            raise BadRequest(f"Invalid limits.processes {v!r}: expected a positive integer")
        out.append(("pids.max", v or "max"))
    return out


def _cpu_settings(config: dict[str, str], version: int) -> list[tuple[str, str]]:
    allowance = config.get("limits.cpu.allowance", "")
    prio = config.get("limits.cpu.priority", "10").strip() or "10"
    if not prio.isdigit() or not 0 <= int(prio) <= 10:
        raise BadRequest(f"Invalid limits.cpu.priority {prio!r}: expected 0 to 10")
    pct, quota = parse_allowance(allowance) if allowance else (100, None)
    # LXD: soft share from the percentage, lowered by priority (10 = normal).
    shares = max(2, 1024 * (pct or 100) // 100 - (10 - int(prio)))
    if version == 1:
        q, p = quota if quota else (-1, 100000)
        return [("cpu.shares", str(shares)), ("cpu.cfs_period_us", str(p)),
                ("cpu.cfs_quota_us", str(q))]
    weight = max(1, min(10000, 1 + (shares - 2) * 9999 // 262142))
    q2 = f"{quota[0]} {quota[1]}" if quota else "max 100000"
    return [("cpu.weight", str(weight)), ("cpu.max", q2)]


def _memory_settings(config: dict[str, str], version: int) -> list[tuple[str, str]]:
    v = config.get("limits.memory", "").strip()
    swap = parse_bool("limits.memory.swap", config.get("limits.memory.swap", "true"))
    limit: int | None = None
    if v.endswith("%"):
        pct = v[:-1]
        if not pct.isdigit() or not 1 <= int(pct) <= 100:
            raise BadRequest(f"Invalid limits.memory {v!r}: a percentage must be 1% to 100%")
        limit = host_memory() * int(pct) // 100
    elif v:
        limit = parse_bytes("limits.memory", v)
        if limit < 4 * 2**20:
            raise BadRequest(f"Invalid limits.memory {v!r}: at least 4MiB is needed")
    if version == 1:
        mem = str(limit) if limit else "-1"
        memsw = mem if (limit and not swap) else "-1"
        return [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", memsw)]
    return [("memory.max", str(limit) if limit else "max"),
            ("memory.swap.max", "0" if (limit and not swap) else "max")]


def memory_order(pairs: list[tuple[str, str]], lowering: bool) -> list[tuple[str, str]]:
    """v1 needs memsw >= memory at every step: lowering sets memory first, raising memsw."""
    mem = [p for p in pairs if p[0] == "memory.limit_in_bytes"]
    sw = [p for p in pairs if p[0] == "memory.memsw.limit_in_bytes"]
    rest = [p for p in pairs if p not in mem and p not in sw]
    return rest + (mem + sw if lowering else sw + mem)
