"""LXD's per-instance metric families for ``GET /1.0/metrics``, as a mixin.

What LXD 5.0 reports for a running container (``lxd/instance/drivers/driver_lxc.go``
``Metrics``), with the same names and labels (``name``, ``project``, ``type``), read the
same way: cgroup files for CPU, memory, block I/O and processes, the container's netns over
netlink for network counters (the driver's ``state``), statvfs of its root for the
filesystem. A VM gives what libvirt and its agent give through the driver's ``state``
(memory, network, processes). Stopped instances have no series, as in LXD; ``lxd_instances``
counts every instance by project and type.

Nothing is spawned: one scrape of 100 containers reads files and netlink in a thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .drivers import cgroups
from .drivers.router import type_of
from .names import host_of

LABELS = ("name", "project", "type")

# memory.stat keys (v1 "total_*" of the whole hierarchy, v2 names) -> LXD's family suffix.
MEMORY_STAT = {
    "total_active_anon": "Active_anon", "active_anon": "Active_anon",
    "total_active_file": "Active_file", "active_file": "Active_file",
    "total_inactive_anon": "Inactive_anon", "inactive_anon": "Inactive_anon",
    "total_inactive_file": "Inactive_file", "inactive_file": "Inactive_file",
    "total_unevictable": "Unevictable", "unevictable": "Unevictable",
    "total_writeback": "Writeback", "file_writeback": "Writeback",
    "total_dirty": "Dirty", "file_dirty": "Dirty",
    "total_mapped_file": "Mapped", "file_mapped": "Mapped",
    "total_rss": "RSS", "anon": "RSS",
    "total_shmem": "Shmem", "shmem": "Shmem",
    "total_cache": "Cached", "file": "Cached",
    "total_slab_reclaimable": "SReclaimable", "slab_reclaimable": "SReclaimable",
}

HELP = {
    "cpu_seconds_total": "The total number of CPU time used in seconds.",
    "cpu_effective_total": "The total number of effective CPUs.",
    "disk_read_bytes_total": "The total number of bytes read.",
    "disk_reads_completed_total": "The total number of completed reads.",
    "disk_written_bytes_total": "The total number of bytes written.",
    "disk_writes_completed_total": "The total number of completed writes.",
    "filesystem_avail_bytes": "The number of available space in bytes.",
    "filesystem_free_bytes": "The number of free space in bytes.",
    "filesystem_size_bytes": "The size of the filesystem in bytes.",
    "memory_OOM_kills_total": "The number of out of memory kills.",
    "memory_MemTotal_bytes": "The total amount of memory or configured memory limit.",
    "memory_MemFree_bytes": "The amount of free memory.",
    "memory_MemAvailable_bytes": "The amount of available memory.",
    "memory_Swap_bytes": "The amount of used swap memory.",
    "procs_total": "The number of running processes.",
    "instances": "The number of instances.",
}
NETWORK = {  # LXD family -> the driver's state counter
    "network_receive_bytes_total": "bytes_received",
    "network_transmit_bytes_total": "bytes_sent",
    "network_receive_packets_total": "packets_received",
    "network_transmit_packets_total": "packets_sent",
    "network_receive_errs_total": "errors_received",
    "network_transmit_errs_total": "errors_sent",
    "network_receive_drop_total": "packets_dropped_inbound",
    "network_transmit_drop_total": "packets_dropped_outbound",
}

Sample = tuple[str, dict[str, str], float]  # (family without "lxd_", extra labels, value)


class MetricsMixin:
    """``metrics_text``: the hook ``shared.service.Service``'s ``metrics`` verb calls."""

    async def metrics_text(self) -> str:
        recs: list[dict[str, Any]] = self.ctx.local()  # type: ignore[attr-defined]
        drivers = self.drivers  # type: ignore[attr-defined]
        host = await asyncio.to_thread(drivers.list_host)
        running = [r for r in recs if host.get(host_of(r)) in ("Running", "Frozen")]
        per_instance = await asyncio.to_thread(_gather, drivers, running)
        return render(recs, per_instance)


def _gather(drivers: Any, records: Iterable[dict[str, Any]]
            ) -> list[tuple[dict[str, str], list[Sample]]]:
    out = []
    for rec in records:
        labels = {"name": rec["name"], "project": rec.get("project") or "default",
                  "type": "virtual-machine" if type_of(rec) == "virtual-machine"
                  else "container"}
        try:
            state = drivers.for_instance(rec).state(host_of(rec))
        except Exception:  # gone, or its driver away: no series, as LXD skips it
            continue
        if state.get("status") not in ("Running", "Frozen"):
            continue
        samples = common_samples(state)
        if labels["type"] == "container" and state.get("pid", 0) > 0:
            try:
                samples += container_samples(state["pid"], host_of(rec), state)
            except (FileNotFoundError, ProcessLookupError):
                continue  # it stopped while we looked
        out.append((labels, samples))
    return out


def common_samples(state: dict[str, Any]) -> list[Sample]:
    """What any driver's ``state`` gives: network counters, processes, VM memory."""
    out: list[Sample] = []
    for dev, nic in sorted((state.get("network") or {}).items()):
        counters = nic.get("counters") or {}
        for family, key in NETWORK.items():
            out.append((family, {"device": dev}, float(counters.get(key, 0))))
    procs = state.get("processes", -1)
    if isinstance(procs, int) and procs >= 0:
        out.append(("procs_total", {}, float(procs)))
    total = (state.get("memory") or {}).get("total", 0)
    if total:  # a VM: libvirt's balloon size and the guest's use
        used = state["memory"].get("usage", 0)
        out += [("memory_MemTotal_bytes", {}, float(total)),
                ("memory_MemFree_bytes", {}, float(max(0, total - used)))]
    return out


def container_samples(pid: int, host: str, state: dict[str, Any]) -> list[Sample]:
    """CPU, memory, block I/O and filesystem of a running container, as LXD reads them."""
    cg = cgroups.CgroupPaths(pid, host)
    out: list[Sample] = []
    # memory
    stats: dict[str, float] = {}
    for k, v in cg.read_kv("memory", "memory.stat").items():
        if k in MEMORY_STAT:
            stats[MEMORY_STAT[k]] = float(v)
    if stats:
        stats["Active"] = stats.get("Active_anon", 0) + stats.get("Active_file", 0)
        stats["Inactive"] = stats.get("Inactive_anon", 0) + stats.get("Inactive_file", 0)
    out += [(f"memory_{k}_bytes", {}, v) for k, v in sorted(stats.items())]
    usage = float((state.get("memory") or {}).get("usage", 0))
    limit = _memory_limit(cg)
    if limit > 0:
        out += [("memory_MemTotal_bytes", {}, limit),
                ("memory_MemFree_bytes", {}, max(0.0, limit - usage)),
                ("memory_MemAvailable_bytes", {}, max(0.0, limit - usage + stats.get(
                    "Cached", 0) + stats.get("SReclaimable", 0)))]
    oom = cg.read_kv("memory", "memory.oom_control" if "memory" in cg.dirs
                     else "memory.events").get("oom_kill", 0)
    out.append(("memory_OOM_kills_total", {}, float(oom)))
    out.append(("memory_Swap_bytes", {}, float((state.get("memory") or {}).get(
        "swap_usage", 0))))
    # cpu
    out += [("cpu_seconds_total", {"cpu": cpu, "mode": mode}, secs)
            for cpu, mode, secs in _cpu_seconds(cg)]
    cpus = _effective_cpus(cg)
    if cpus:
        out.append(("cpu_effective_total", {}, float(cpus)))
    # block I/O (loop devices skipped, as LXD: they are the pools' backing files)
    for dev, io in sorted(_io_stats(cg).items()):
        out += [("disk_read_bytes_total", {"device": dev}, io[0]),
                ("disk_reads_completed_total", {"device": dev}, io[1]),
                ("disk_written_bytes_total", {"device": dev}, io[2]),
                ("disk_writes_completed_total", {"device": dev}, io[3])]
    # the root filesystem, seen from inside
    try:
        st = os.statvfs(f"/proc/{pid}/root")
        fs = {"device": "root", "mountpoint": "/", "fstype": _root_fstype(pid)}
        out += [("filesystem_size_bytes", fs, float(st.f_blocks * st.f_frsize)),
                ("filesystem_free_bytes", fs, float(st.f_bfree * st.f_frsize)),
                ("filesystem_avail_bytes", fs, float(st.f_bavail * st.f_frsize))]
    except OSError:
        pass
    return out


def _memory_limit(cg: cgroups.CgroupPaths) -> float:
    """The effective limit: the cgroup's, or the host's memory when unlimited (LXD)."""
    raw = None
    if "memory" in cg.dirs:
        raw = cg.read_int("memory", "memory.limit_in_bytes")
    else:
        p = cg.path("memory", "memory.max")
        try:
            text = p.read_text().strip() if p else "max"
            raw = None if text == "max" else int(text)
        except (OSError, ValueError):
            raw = None
    host = _host_memory()
    return float(min(raw, host) if raw and host else raw or host)


def _host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_seconds(cg: cgroups.CgroupPaths) -> list[tuple[str, str, float]]:
    """(cpu, mode, seconds): per CPU from v1 ``cpuacct.usage_all``, else v2 ``cpu.stat``
    as CPU 0 (LXD does the same)."""
    out = []
    p = cg.path("cpuacct", "cpuacct.usage_all") if "cpuacct" in cg.dirs else None
    if p is not None:
        try:
            for line in p.read_text().splitlines()[1:]:
                cpu, user, system = line.split()[:3]
                out += [(cpu, "system", int(system) / 1e9), (cpu, "user", int(user) / 1e9)]
            return out
        except (OSError, ValueError):
            out = []
    stat = cg.read_kv("cpu", "cpu.stat")
    if "user_usec" in stat:
        out = [("0", "system", stat.get("system_usec", 0) / 1e6),
               ("0", "user", stat["user_usec"] / 1e6)]
    return out


def _effective_cpus(cg: cgroups.CgroupPaths) -> int:
    name = "cpuset.effective_cpus" if "cpuset" in cg.dirs else "cpuset.cpus.effective"
    p = cg.path("cpuset", name)
    try:
        text = p.read_text().strip() if p else ""
    except OSError:
        return 0
    count = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def _io_stats(cg: cgroups.CgroupPaths) -> dict[str, list[float]]:
    """{device: [read bytes, reads, written bytes, writes]} from blkio (v1) or io.stat."""
    out: dict[str, list[float]] = {}

    def slot(majmin: str) -> list[float] | None:
        if majmin.startswith("7:"):
            return None
        return out.setdefault(_dev_name(majmin), [0.0, 0.0, 0.0, 0.0])

    if "blkio" in cg.dirs:
        for fname, (ri, wi) in (("blkio.throttle.io_service_bytes_recursive", (0, 2)),
                                ("blkio.throttle.io_serviced_recursive", (1, 3))):
            p = cg.path("blkio", fname)
            try:
                lines = p.read_text().splitlines() if p else []
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if len(f) != 3 or (s := slot(f[0])) is None:
                    continue
                if f[1] == "Read":
                    s[ri] = float(f[2])
                elif f[1] == "Write":
                    s[wi] = float(f[2])
        return out
    p = cg.path("io", "io.stat")
    try:
        lines = p.read_text().splitlines() if p else []
    except OSError:
        lines = []
    for line in lines:
        f = line.split()
        if not f or (s := slot(f[0])) is None:
            continue
        kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
        s[:] = [float(kv.get(k, 0)) for k in ("rbytes", "rios", "wbytes", "wios")]
    return out


def _dev_name(majmin: str) -> str:
    try:
        for line in Path(f"/sys/dev/block/{majmin}/uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return line.split("=", 1)[1]
    except OSError:
        pass
    return majmin


def _root_fstype(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
            f = line.split()
            if len(f) > 2 and f[1] == "/":
                return f[2]
    except OSError:
        pass
    return ""


def render(records: list[dict[str, Any]],
           per_instance: list[tuple[dict[str, str], list[Sample]]]) -> str:
    """LXD's families (gauges for ``*_bytes``, ``procs`` and counts, as LXD types them)."""
    families: dict[str, Metric] = {}

    def family(name: str, extra: tuple[str, ...]) -> Metric:
        full = "lxd_" + name
        fam = families.get(full)
        if fam is None:
            doc = HELP.get(name) or _help_of(name)
            labels = [*extra, *LABELS]
            if name.endswith("_bytes") or name in ("procs_total", "cpu_effective_total",
                                                    "instances"):
                fam = GaugeMetricFamily(full, doc, labels=labels)
            else:
                fam = CounterMetricFamily(full.removesuffix("_total"), doc, labels=labels)
            families[full] = fam
        return fam

    for labels, samples in per_instance:
        for name, extra, value in samples:
            keys = tuple(extra)
            family(name, keys).add_metric([*extra.values(), *(labels[k] for k in LABELS)],
                                          value)
    counts: dict[tuple[str, str], int] = {}
    for rec in records:
        kind = "virtual-machine" if type_of(rec) == "virtual-machine" else "container"
        project = rec.get("project") or "default"
        counts[(project, kind)] = counts.get((project, kind), 0) + 1
        counts.setdefault((project, "container" if kind != "container" else
                           "virtual-machine"), 0)
    inst = GaugeMetricFamily("lxd_instances", HELP["instances"], labels=["project", "type"])
    for (project, kind), n in sorted(counts.items()):
        inst.add_metric([project, kind], float(n))
    families["lxd_instances"] = inst

    class _Fixed:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _help_of(name: str) -> str:
    if name.startswith("memory_"):
        return f"The amount of {name.removeprefix('memory_').removesuffix('_bytes')} memory."
    if name.startswith("network_"):
        return "The amount of " + name.removeprefix("network_").replace("_", " ") + \
            " on a given interface."
    return name.replace("_", " ")
