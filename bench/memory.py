"""Memory of a Corral stack: RSS and PSS of each process, idle and with running containers.

RSS counts every page a process maps, shared library pages included, so summing RSS over
six Python processes counts libpython, libc, liblxc... six times. PSS divides each shared
page among the processes mapping it, so PSS sums to what the stack really costs the host.
Both are reported (``/proc/PID/smaps_rollup``), and "alone" (:func:`alone_kib`): each
physical page once (as root exactly, from ``/proc/PID/pagemap``), what the stack costs the
host by itself whatever else runs (PSS drops when other programs map the same libraries,
as a second stack does).
Goals are read on "alone", comparable with LXD's figure (one process's RSS).

Use from another bench (``make bench``):

    from bench.memory import stack_pids, measure_pids, monitors, report
    snap = measure_pids(stack_pids(stack, nats))           # {name: Usage}
    mons = monitors(stack.dir / "lxc")                     # {container: Usage}
    print(report("after the benchmark", snap, mons))

or standalone: ``.venv/bin/python -m bench.memory [--containers 10] [--mode both]
[--no-forkserver]``, which brings up its own stack (separate processes forked from a fork
server as `make up` runs them, the fork server counted; then ``corral-all``), measures it
idle, with N running busybox containers (dir pool, bridge + DHCP), and after they are
deleted.
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS_MIB = {"separate": 200, "single": 100}


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    pss_kib: int

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.rss_kib + other.rss_kib, self.pss_kib + other.pss_kib)


ZERO = Usage(0, 0)


def usage(pid: int) -> Usage:
    """RSS and PSS of one process (zero when it is gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return Usage(rss, pss)


def alone_kib(pids: list[int]) -> int:
    """What these processes cost the host by themselves: their private pages, plus each
    shared page of a file (libpython, liblxc, .so of the imports...) counted once.

    As root, exactly: each physical page once (:func:`unique_kib`, from the page frame
    numbers), so pages a fork server's children still share copy-on-write count once too.
    Otherwise estimated from ``smaps`` (:func:`alone_estimate_kib`); both agreed within
    0.5 MiB on a standalone and on a forked stack (docs/performance.md "Memory").
    """
    exact = unique_kib(pids)
    return alone_estimate_kib(pids) if exact is None else exact


def alone_estimate_kib(pids: list[int]) -> int:
    """:func:`alone_kib` without frame numbers: private pages, plus each shared page of a
    file counted once.

    Why besides PSS: PSS divides a shared page among every process mapping it, so other
    Python programs or another Corral stack on the host lower it; RSS counts a library
    once per process. Here a file mapping's shared pages (keyed by device, inode, offset)
    count once, at the largest any of these processes has resident; an anonymous shared
    mapping (copy-on-write after a fork) is keyed by its address range. An estimate: two
    processes resident on different pages of one mapping count as the larger.
    """
    private = 0
    shared: dict[tuple[str, ...], int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        mkey: tuple[str, ...] = ()
        sh = 0
        for line in text.splitlines():
            head = line.split(None, 5)
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                if mkey and sh:
                    shared[mkey] = max(shared.get(mkey, 0), sh)
                addr, _perm, offset, dev, inode = head[:5]
                mkey = (dev, inode, offset) if inode != "0" else ("anon", addr)
                sh = 0
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
            elif line.startswith(("Shared_Clean:", "Shared_Dirty:")):
                sh += int(line.split()[1])
        if mkey and sh:
            shared[mkey] = max(shared.get(mkey, 0), sh)
    return private + sum(shared.values())


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63


def frames(pid: int) -> set[int]:
    """The physical page frames resident in ``pid``'s memory (``/proc/PID/pagemap``).

    Root reads each present page's frame number (others read zeros, see
    :func:`unique_kib`). Only mappings with resident pages are read (``smaps``' Rss), so a
    process's reserved but untouched address space costs nothing to scan.
    """
    out: set[int] = set()
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            ranges = []
            for line in smaps:
                head = line.split(None, 1)
                if head and "-" in head[0] and ":" not in head[0]:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                elif line.startswith("Rss:") and int(line.split()[1]) > 0:
                    ranges.append((lo, hi))
            page = PAGE_KIB * 1024
            for lo, hi in ranges:
                pagemap.seek(lo // page * 8)
                entries = array.array("Q", pagemap.read((hi - lo) // page * 8))
                out.update(e & _PFN_MASK for e in entries if e & _PRESENT)
    except (OSError, ValueError):
        pass
    out.discard(0)
    return out


def unique_kib(pids: list[int]) -> int | None:
    """Exactly what :func:`alone_kib` estimates: each physical page resident in any of
    these processes counted once, found by its frame number. Shared library pages, and the
    pages a fork server's children still share copy-on-write with it and with each other,
    count once; a page a child wrote to is its own. ``None`` when frame numbers cannot be
    read (not root: the kernel hides them).
    """
    seen: set[int] = set()
    for pid in pids:
        seen |= frames(pid)
    if not seen and pids and os.geteuid() != 0:
        return None
    return len(seen) * PAGE_KIB


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, recursively (helpers a service forked: dnsmasq, forkers...)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def stack_pids(stack, nats=None) -> dict[str, int]:
    """``{name: pid}`` of a tests.stack.Stack's processes (and its NatsServer)."""
    pids = {name: p.pid for name, p in stack.procs.items() if p.poll() is None}
    server = getattr(stack, "forkserver", None)
    if server is not None and server.poll() is None:
        pids["forkserver"] = server.pid  # the pages its children share are its own
    if nats is not None and nats.proc is not None:
        pids["nats-server"] = nats.proc.pid
    return pids


def measure_pids(pids: dict[str, int], helpers: bool = True) -> dict[str, Usage]:
    """Usage of each named process; with ``helpers`` the sum of each one's descendants
    is reported as ``<name>+children`` (not counted in the stack's own total)."""
    out = {name: usage(pid) for name, pid in pids.items()}
    if helpers:
        for name, pid in pids.items():
            kids = descendants(pid)
            if kids:
                out[f"{name}+children"] = sum((usage(k) for k in kids), ZERO)
    return out


def monitor_pids(lxcpath: Path) -> dict[str, int]:
    """``{container: pid}`` of each ``[lxc monitor] <lxcpath> <name>`` under ``lxcpath``."""
    prefix = f"[lxc monitor] {lxcpath} "
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(prefix):
            out[cmd[len(prefix):].strip()] = int(d.name)
    return out


def monitors(lxcpath: Path) -> dict[str, Usage]:
    """Each running container's ``[lxc monitor]`` process under ``lxcpath``."""
    return {name: usage(pid) for name, pid in monitor_pids(lxcpath).items()}


def total(snap: dict[str, Usage]) -> Usage:
    """The stack's own processes (not ``+children`` helper sums)."""
    return sum((u for n, u in snap.items() if not n.endswith("+children")), ZERO)


def report(title: str, snap: dict[str, Usage], mons: dict[str, Usage] | None = None) -> str:
    lines = [f"{title}", f"  {'process':<26} {'RSS MiB':>9} {'PSS MiB':>9}"]
    for name, u in sorted(snap.items()):
        lines.append(f"  {name:<26} {u.rss_kib / 1024:>9.1f} {u.pss_kib / 1024:>9.1f}")
    t = total(snap)
    lines.append(f"  {'total (stack)':<26} {t.rss_kib / 1024:>9.1f} {t.pss_kib / 1024:>9.1f}")
    if mons:
        m = sum(mons.values(), ZERO)
        n = len(mons)
        lines.append(f"  {'lxc monitors (%d)' % n:<26} {m.rss_kib / 1024:>9.1f} "
                     f"{m.pss_kib / 1024:>9.1f}   per container: RSS "
                     f"{m.rss_kib / 1024 / n:.1f}, PSS {m.pss_kib / 1024 / n:.1f} MiB")
    return "\n".join(lines)


def _run_mode(mode: str, containers: int, workdir: Path, forked: bool = True
              ) -> list[tuple[str, Usage, float, str]]:
    """Bring up a stack in ``mode``, measure idle / running / after; tear it down.
    Separate mode forks the services from a fork server, as `make up` does, unless not
    ``forked`` (each service its own program, as the tests run them)."""
    from bench.common import get
    from bench.instances import API
    from tests.stack import NatsServer, Stack, wait_for

    tag = "m" + uuid.uuid4().hex[:5]
    nats = NatsServer(workdir / "nats")
    nats.start()
    stack = Stack(workdir / "corral", nats, forkserver=forked and mode == "separate",
                  CORRAL_LOG_LEVEL="warning")
    rows: list[tuple[str, Usage, float, str]] = []

    def alone() -> float:
        return alone_kib(list(stack_pids(stack, nats).values())) / 1024

    api = None
    try:
        if mode == "single":
            stack.start("all")
            wait_for(stack.ready, 90, what="corral-all")
        else:
            stack.start_all(90)
        api = API(stack.socket)
        time.sleep(1)
        snap = measure_pids(stack_pids(stack, nats))
        print(report(f"{mode}: idle", snap))
        rows.append(("idle", total(snap), alone(), ""))
        _setup(api, tag, workdir)
        names = [f"{tag}c{i}" for i in range(containers)]
        for n in names:
            api.call("POST", "/1.0/instances", {"name": n, "profiles": [tag], "source": {
                "type": "image", "alias": f"{tag}img"}})
            api.call("PUT", f"/1.0/instances/{n}/state", {"action": "start"})
        for _ in range(50):  # what a client does with them: lists, states
            get(api.conn, "/1.0/instances?recursion=2")
        time.sleep(1)
        snap = measure_pids(stack_pids(stack, nats))
        mons = monitors(stack.dir / "lxc")
        print(report(f"{mode}: {containers} containers running", snap, mons))
        m = sum(mons.values(), ZERO)
        rows.append((f"{containers} running", total(snap), alone(),
                     f"monitors/container RSS {m.rss_kib / 1024 / max(1, len(mons)):.1f} "
                     f"PSS {m.pss_kib / 1024 / max(1, len(mons)):.1f} MiB"))
        for n in names:
            api.call("PUT", f"/1.0/instances/{n}/state", {"action": "stop", "force": True})
            api.call("DELETE", f"/1.0/instances/{n}")
        time.sleep(1)
        snap = measure_pids(stack_pids(stack, nats))
        print(report(f"{mode}: after (containers deleted)", snap))
        rows.append(("after", total(snap), alone(), ""))
    finally:
        if api is not None:
            _teardown(api, tag)
        stack.stop_all()
        nats.stop()
    return rows


def _setup(api, tag: str, workdir: Path) -> None:
    from bench.instances import import_busybox
    api.call("POST", "/1.0/storage-pools", {"name": tag, "driver": "dir"})
    api.call("POST", "/1.0/networks", {"name": f"{tag}br", "type": "bridge",
                                       "config": {"ipv4.address": "auto"}})
    api.call("POST", "/1.0/profiles", {"name": tag, "devices": {
        "root": {"type": "disk", "path": "/", "pool": tag},
        "eth0": {"type": "nic", "name": "eth0", "network": f"{tag}br"}}})
    import_busybox(api, workdir, alias=f"{tag}img")


def _teardown(api, tag: str) -> None:
    from bench.instances import teardown
    teardown(api, tag)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--mode", choices=("separate", "single", "both"), default="both")
    ap.add_argument("--no-forkserver", action="store_true",
                    help="separate mode: start each service as its own program")
    args = ap.parse_args()
    modes = ("separate", "single") if args.mode == "both" else (args.mode,)
    results = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"corral-mem-{mode}-") as d:
            os.chmod(d, 0o755)
            results[mode] = _run_mode(mode, args.containers, Path(d),
                                      forked=not args.no_forkserver)
    print("\nCorral memory (MiB, stack = Python services + gateway + nats-server; "
          "lxc monitors apart)")
    print(f"{'mode':<10} {'when':<14} {'RSS':>8} {'PSS':>8} {'alone':>8} {'goal':>6}  note")
    for mode, rows in results.items():
        for when, u, alone, note in rows:
            print(f"{mode:<10} {when:<14} {u.rss_kib / 1024:>8.1f} {u.pss_kib / 1024:>8.1f} "
                  f"{alone:>8.1f} {GOALS_MIB[mode]:>6}  {note}")
    print("alone: each physical page once (alone_kib; pagemap frames as root), what the "
          "stack costs by itself; the goals are read on it. Separate mode: "
          + ("each service its own program." if args.no_forkserver else
             "services forked from a fork server (as `make up`), which is counted."))
    print("LXD 5.0 here: 57 MiB idle, 96 MiB after the benchmark (one process, RSS); "
          "lxc monitor 11-15 MiB per container.")


if __name__ == "__main__":
    main()
