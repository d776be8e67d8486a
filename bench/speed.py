"""`make bench`: every speed and footprint figure of Corral in one table, beside its goal
and LXD 5.0's figure.

One run brings up its own stack (nats-server + services + gateway in a temporary
CORRAL_DIR, with a btrfs loop pool, a bridge and a profile carrying a unique prefix), then
measures through the stock `lxc` client and the unix socket:

- container lifecycle: launch, exec, stop --force, start, delete (stopped), snapshot, copy;
- lists: ``GET /1.0/instances?recursion=1`` with 10 and ``--many`` (1000) instance records,
  ``recursion=2`` with 10 running;
- memory: the stack idle, with 10 running containers and after the benchmark (RSS and PSS;
  PSS shares the pages of shared libraries fairly between processes; "alone" counts
  each shared page once, whatever else runs: the memory goals use it), the lxc monitor of
  one running container; then the same in single mode (``corral-all``);
- VMs under TCG (unless ``--no-vm``): launch to the first successful exec, exec true.

LXD's column is the figure measured beside Corral on this machine kind (issue 12), unless
an LXD daemon is reachable through ``LXD_SOCK`` (its unix socket): then the same figures are
measured against it in this run, with the same image and the same client.

Run: `make bench` or `.venv/bin/python -m bench.speed [--runs 10] [--many 1000] [--no-vm]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import UnixHTTPConnection, get, measure, pct  # noqa: E402
from bench.instances import API, setup, teardown, timed  # noqa: E402
from bench.memory import alone_kib, descendants, monitor_pids, usage  # noqa: E402
from bench.memory import stack_pids as named_pids  # noqa: E402
from tests.stack import NatsServer, Stack, wait_for  # noqa: E402


@dataclass
class Figure:
    """One row: what, Corral's samples (ms) or value (MiB), the goal, LXD's figure."""

    name: str
    goal: float | None
    lxd_ref: str = ""
    unit: str = "ms"
    samples: list[float] = field(default_factory=list)
    lxd: list[float] = field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


# name -> (goal, LXD 5.0 here as issue 12 measured it)
FIGURES: list[tuple[str, float | None, str, str]] = [
    ("lxc launch busybox", 70, "296", "ms"),
    ("lxc exec c -- true", 20, "39", "ms"),
    ("lxc stop --force", 65, "679", "ms"),
    ("lxc start (stopped)", 60, "186", "ms"),
    ("lxc delete (stopped)", 25, "37", "ms"),
    ("lxc snapshot (running)", 30, "48", "ms"),
    ("lxc copy (stopped)", 40, "54", "ms"),
    ("GET recursion=1, 10 instances", 2, "4.3", "ms"),
    ("GET recursion=1, MANY instances", 50, "", "ms"),
    ("GET recursion=2, 10 running", 10, "44", "ms"),
    # Memory goals are read on "alone" (bench.memory.alone_kib: private pages + each
    # shared file page once), what the stack costs the host by itself, comparable with
    # LXD's one-process RSS; PSS drops when other programs map the same libraries.
    ("memory: stack idle (RSS)", None, "57", "MiB"),
    ("memory: stack idle (PSS)", None, "", "MiB"),
    ("memory: stack idle (alone)", None, "57", "MiB"),
    ("memory: stack, 10 running (RSS)", None, "", "MiB"),
    ("memory: stack, 10 running (alone)", None, "", "MiB"),
    ("memory: stack after the bench (RSS)", None, "96", "MiB"),
    ("memory: stack after the bench (PSS)", None, "", "MiB"),
    ("memory: stack after the bench (alone)", 200, "96", "MiB"),
    ("memory: lxc monitor per container (RSS)", 8, "11-15", "MiB"),
    ("memory: lxc monitor per container (PSS)", 8, "", "MiB"),
    ("single mode: lxc start (stopped)", 60, "186", "ms"),
    ("single mode: lxc delete (stopped)", 25, "37", "ms"),
    ("single mode: memory idle (RSS)", None, "57", "MiB"),
    ("single mode: memory idle (alone)", None, "57", "MiB"),
    ("single mode: memory, 10 running (RSS)", None, "", "MiB"),
    ("single mode: memory, 10 running (alone)", None, "", "MiB"),
    ("single mode: memory after the bench (RSS)", None, "96", "MiB"),
    ("single mode: memory after the bench (PSS)", None, "", "MiB"),
    ("single mode: memory after the bench (alone)", 100, "96", "MiB"),
    ("VM: launch to first exec (TCG)", 4000, "cannot run", "ms"),
    ("VM: lxc exec v -- true", 25, "-", "ms"),
]


# What bounds each figure when its goal is missed: from profiles (spans of every process
# through CORRAL_TRACE_FILE, perf_counter steps in the instance service, py-spy, smaps);
# docs/performance.md has the numbers behind each phrase.
BOUNDS: dict[str, str] = {
    "lxc launch busybox": "lxc-start (cgroup v1 moves in ~12 hierarchies, mounts, "
                          "pivot_root, veth: kernel work); create ~35 ms (btrfs snapshot, "
                          "LXC config); the client's 7 requests",
    "lxc exec c -- true": "client 11-15 ms + 7 HTTP exchanges (4 websockets one after "
                          "another); attach >=4.4 ms kernel; one acked write (the record)",
    "lxc stop --force": "LXC teardown after init's SIGKILL (veth delete ~23 ms); client",
    "lxc start (stopped)": "lxc-start (cgroup v1 moves, mounts, pivot_root, veth); NIC "
                           "config from the network service; client 5 requests",
    "lxc delete (stopped)": "client ~11 ms + 3 requests; volume delete beside the lease "
                            "release (nic_release ~10 ms: tc, dhcp_release); journal",
    "lxc snapshot (running)": "btrfs snapshot + 2 acked KV writes; client",
    "lxc copy (stopped)": "btrfs snapshot + LXC definition + NIC config; client",
    "GET recursion=1, 10 instances": "HTTP parse + one bus round trip (~1.5 ms) + JSON",
    "GET recursion=1, MANY instances": "2.25 MB of JSON through nats: CPU instance ~14 "
                                       "ms, gateway ~8, nats-server 5-7; this bench's "
                                       "own json.loads of the body 12-19",
    "GET recursion=2, 10 running": "~6 ms CPU reading cgroups, netns netlink, disk use",
    "memory: stack after the bench (alone)": "fork server 47 + 7 services x 12-38 MiB "
                                             "own (COW copies on use, own modules, heap "
                                             "at work: gateway 66->83, instance 47->75 RSS) "
                                             "+ nats-server ~67 (garbage until Go's GC)",
    "single mode: memory after the bench (alone)": "one Python: imports ~51 MiB private "
                                                   "(nats/asyncio/ssl 11, services 13, "
                                                   "shared 7, aiohttp 5, pyroute2 4) + heap "
                                                   "at work ~20 + nats-server 21-30",
    "single mode: lxc start (stopped)": "lxc-start (kernel work); client 5 requests",
    "single mode: lxc delete (stopped)": "client ~11 ms + 3 requests; LXC dir + cgroups",
    "VM: launch to first exec (TCG)": "SeaBIOS + kernel unpack ~0.6 s emulated, ACPI link "
                                      "of the virtio devices (one now), agent start",
    "VM: lxc exec v -- true": "client + acked operation writes; libvirt state from "
                              "events (no round trip)",
}


# ---------------------------------------------------------------- memory of processes

def rss_mib(pids: list[int]) -> float:
    return sum(usage(p).rss_kib for p in pids) / 1024


def pss_mib(pids: list[int]) -> float:
    return sum(usage(p).pss_kib for p in pids) / 1024


def alone_mib(pids: list[int]) -> float:
    return alone_kib(pids) / 1024


def processes(stack: Stack, nats: NatsServer, lxc_path: Path) -> dict[str, list[int]]:
    """Each process of the stack (nats-server, every service, the gateway) with what it
    runs (dnsmasq, helpers), but not the containers' monitors (counted per container) nor
    their payloads."""
    inside = {p for m in monitor_pids(lxc_path).values() for p in (m, *descendants(m))}
    return {name: [p for p in (pid, *descendants(pid)) if p not in inside]
            for name, pid in named_pids(stack, nats).items()}


def stack_pids(stack: Stack, nats: NatsServer, lxc_path: Path) -> list[int]:
    return [p for pids in processes(stack, nats, lxc_path).values() for p in pids]


def per_process(stack: Stack, nats: NatsServer, lxc_path: Path) -> str:
    """RSS/PSS of each process of the stack (with its helpers), to see which one grew."""
    return ", ".join(f"{name} {rss_mib(pids):.0f}/{pss_mib(pids):.0f}"
                     for name, pids in processes(stack, nats, lxc_path).items())


def lxd_pid(sock: Path) -> int | None:
    """The daemon listening on ``sock`` (to read its memory), found by the socket inode."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7] == str(sock):
            inodes.add(parts[6])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


# ---------------------------------------------------------------- the runs

class Client:
    """The stock `lxc` client against one daemon (Corral's or LXD's socket directory)."""

    def __init__(self, lxd_dir: Path) -> None:
        self.env = {**os.environ, "LXD_DIR": str(lxd_dir)}

    def __call__(self, *args: str) -> None:
        r = subprocess.run(["lxc", *args], env=self.env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"lxc {' '.join(args)}: {r.stderr.strip()}")


def lifecycle(lx: Client, conn: UnixHTTPConnection, image: str, profile: list[str],
              names: list[str]) -> dict[str, list[float]]:
    """The container figures on one daemon; leaves ``names`` running."""
    out: dict[str, list[float]] = {}
    out["lxc launch busybox"] = timed(lambda n: lx("launch", image, n, *profile), names)
    out["lxc exec c -- true"] = timed(lambda n: lx("exec", n, "--", "true"), names * 3)
    out["lxc stop --force"] = timed(lambda n: lx("stop", "--force", n), names)
    out["lxc start (stopped)"] = timed(lambda n: lx("start", n), names)
    out["lxc snapshot (running)"] = timed(lambda n: lx("snapshot", n, "s0"), names)
    out["GET recursion=1, 10 instances"] = measure(
        lambda: get(conn, "/1.0/instances?recursion=1"), 200)
    out["GET recursion=2, 10 running"] = measure(
        lambda: get(conn, "/1.0/instances?recursion=2"), 50, warmup=5)
    return out


def stopped_figures(lx: Client, names: list[str]) -> dict[str, list[float]]:
    """Copy and delete of stopped containers; removes ``names`` and their copies."""
    for n in names:
        lx("stop", "--force", n)
    out = {"lxc copy (stopped)": timed(lambda n: lx("copy", n, n + "c", "--instance-only"),
                                       names)}
    for n in names:
        lx("delete", f"{n}/s0")
    out["lxc delete (stopped)"] = timed(lambda n: lx("delete", n), names)
    for n in names:
        lx("delete", n + "c")
    return out


def patient(api: API, method: str, path: str, body: object = None,
            done_if: str = "") -> None:
    """One call of the bulk setup, retried while the service is too busy to answer in
    time (a 503 on a loaded machine must not throw away a whole run): a retry that finds
    the work done (``done_if`` in its error) is a success."""
    for attempt in range(6):
        try:
            api.call(method, path, body)
            return
        except RuntimeError as exc:
            if done_if and done_if in str(exc).lower() and attempt:
                return
            if "did not answer" not in str(exc) or attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))


def many_records(api_sock: Path, names: list[str], image: str, profile: str) -> None:
    """Create ``names`` as stopped instances, eight at a time over their own connections."""
    def make(chunk: list[str]) -> None:
        api = API(api_sock)
        for n in chunk:
            patient(api, "POST", "/1.0/instances", {
                "name": n, "profiles": [profile], "source": {"type": "image", "alias": image}},
                done_if="already exists")
    chunks = [names[i::8] for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(make, chunks))


def delete_many(api_sock: Path, names: list[str]) -> None:
    def drop(chunk: list[str]) -> None:
        api = API(api_sock)
        for n in chunk:
            patient(api, "DELETE", f"/1.0/instances/{n}", done_if="not found")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(drop, [names[i::8] for i in range(8)]))


def start_stack(base: Path, single: bool, vm: bool = False) -> tuple[NatsServer, Stack]:
    """A stack for the bench. Without ``vm`` its instance service does not look for
    libvirtd (CORRAL_VM=0): the container figures, memory included, are those of a
    container host whether or not some libvirtd runs on this machine (with one, the
    instance service would load libvirt, ~11 MiB); the VM figures get ``vm``."""
    nats = NatsServer(base / "nats")
    nats.start()
    # separate mode as `make up` runs it: forked from a fork server (CORRAL_FORKSERVER=0: not)
    stack = Stack(base / "corral", nats, CORRAL_LOG_LEVEL="warning",
                  forkserver=not single and os.environ.get("CORRAL_FORKSERVER") != "0",
                  **({} if vm else {"CORRAL_VM": "0"}))
    if single:
        stack.start("all")
        wait_for(stack.ready, 60, what="corral-all to answer")
    else:
        stack.start_all()
    return nats, stack


details: list[str] = []  # per-process memory (MiB RSS/PSS), printed under the table


def run_corral(args: argparse.Namespace, figs: dict[str, Figure], base: Path) -> None:
    tag = "q" + uuid.uuid4().hex[:5]
    nats, stack = start_stack(base / "separate", single=False)
    api = None
    lxc_path = stack.dir / "lxc"
    try:
        api = API(stack.socket)
        setup(api, tag, base)
        time.sleep(2)  # let the services settle before the idle figure
        pids = stack_pids(stack, nats, lxc_path)
        figs["memory: stack idle (RSS)"].samples = [rss_mib(pids)]
        figs["memory: stack idle (PSS)"].samples = [pss_mib(pids)]
        figs["memory: stack idle (alone)"].samples = [alone_mib(pids)]
        details.append("idle: " + per_process(stack, nats, lxc_path))
        lx = Client(stack.dir)
        names = [f"{tag}c{i}" for i in range(args.runs)]
        for k, v in lifecycle(lx, api.conn, f"{tag}img", ["-p", tag], names).items():
            figs[k].samples = v
        pids = stack_pids(stack, nats, lxc_path)
        figs["memory: stack, 10 running (RSS)"].samples = [rss_mib(pids)]
        figs["memory: stack, 10 running (alone)"].samples = [alone_mib(pids)]
        details.append(f"{args.runs} running: " + per_process(stack, nats, lxc_path))
        mons = list(monitor_pids(lxc_path).values())
        if mons:
            figs["memory: lxc monitor per container (RSS)"].samples = [
                rss_mib([m]) for m in mons]
            figs["memory: lxc monitor per container (PSS)"].samples = [
                pss_mib([m]) for m in mons]
        for k, v in stopped_figures(lx, names).items():
            figs[k].samples = v
        many = [f"{tag}m{i}" for i in range(args.many)]
        many_records(stack.socket, many, f"{tag}img", tag)
        figs["GET recursion=1, MANY instances"].samples = measure(
            lambda: get(api.conn, "/1.0/instances?recursion=1"), 50, warmup=3)
        delete_many(stack.socket, many)
        pids = stack_pids(stack, nats, lxc_path)
        details.append("after the bench: " + per_process(stack, nats, lxc_path))
        figs["memory: stack after the bench (RSS)"].samples = [rss_mib(pids)]
        figs["memory: stack after the bench (PSS)"].samples = [pss_mib(pids)]
        figs["memory: stack after the bench (alone)"].samples = [alone_mib(pids)]
    finally:
        if api is not None:
            teardown(api, tag)
        stack.stop_all()
        nats.stop()


def run_single(args: argparse.Namespace, figs: dict[str, Figure], base: Path) -> None:
    tag = "r" + uuid.uuid4().hex[:5]
    nats, stack = start_stack(base / "single", single=True)
    api = None
    lxc_path = stack.dir / "lxc"
    try:
        api = API(stack.socket)
        setup(api, tag, base)
        time.sleep(2)
        pids = stack_pids(stack, nats, lxc_path)
        figs["single mode: memory idle (RSS)"].samples = [rss_mib(pids)]
        figs["single mode: memory idle (alone)"].samples = [alone_mib(pids)]
        lx = Client(stack.dir)
        names = [f"{tag}c{i}" for i in range(args.runs)]
        for n in names:
            lx("launch", f"{tag}img", n, "-p", tag)
        pids = stack_pids(stack, nats, lxc_path)
        figs["single mode: memory, 10 running (RSS)"].samples = [rss_mib(pids)]
        figs["single mode: memory, 10 running (alone)"].samples = [alone_mib(pids)]
        for n in names:
            lx("stop", "--force", n)
        figs["single mode: lxc start (stopped)"].samples = timed(lambda n: lx("start", n),
                                                                 names)
        for n in names:
            lx("stop", "--force", n)
        figs["single mode: lxc delete (stopped)"].samples = timed(lambda n: lx("delete", n),
                                                                  names)
        pids = stack_pids(stack, nats, lxc_path)
        figs["single mode: memory after the bench (RSS)"].samples = [rss_mib(pids)]
        figs["single mode: memory after the bench (PSS)"].samples = [pss_mib(pids)]
        figs["single mode: memory after the bench (alone)"].samples = [alone_mib(pids)]
    finally:
        if api is not None:
            teardown(api, tag)
        stack.stop_all()
        nats.stop()


def run_vm(args: argparse.Namespace, figs: dict[str, Figure], base: Path) -> None:
    from bench import vms

    tag = "v" + uuid.uuid4().hex[:5]
    nats, stack = start_stack(base / "vm", single=False, vm=True)
    env = {**os.environ, "CORRAL_DIR": str(stack.dir), "CORRAL_APT_UPDATED": "1"}
    subprocess.run([str(ROOT / "deploy/libvirt.sh"), "up"], env=env, check=True,
                   capture_output=True)
    api = None
    try:
        api = API(stack.socket)
        wait_for(lambda: "qemu" in get(api.conn, "/1.0")["metadata"]["environment"]["driver"],
                 30, what="the instance service to see libvirtd")
        vms.setup(api, tag, base)
        lx = Client(stack.dir)
        names = [f"{tag}v{i}" for i in range(args.vm_runs)]

        def launch(name: str) -> None:
            api.call("POST", "/1.0/instances", {
                "name": name, "source": {"type": "image", "alias": f"{tag}img"},
                "profiles": [tag], "start": True, "type": "virtual-machine",
                "config": {"limits.cpu": "1", "limits.memory": "256MiB"}})
            vms.agent_ready(api, name)

        figs["VM: launch to first exec (TCG)"].samples = timed(launch, names)
        figs["VM: lxc exec v -- true"].samples = timed(lambda n: lx("exec", n, "--", "true"),
                                                       names * 4)
    finally:
        if api is not None:
            teardown(api, tag)
        stack.stop_all()
        nats.stop()
        subprocess.run([str(ROOT / "deploy/libvirt.sh"), "down"], env=env, check=False,
                       capture_output=True)


def run_lxd(args: argparse.Namespace, figs: dict[str, Figure], sock: Path, base: Path
            ) -> None:
    """The same container figures against the LXD daemon at ``sock``, in this run."""
    from shared.image.build import build_busybox

    tag = "x" + uuid.uuid4().hex[:5]
    lx = Client(sock.parent)
    tarball = build_busybox(base / "lxd-image")
    lx("image", "import", str(tarball), "--alias", f"{tag}img")
    names = [f"{tag}c{i}" for i in range(args.runs)]
    conn = UnixHTTPConnection(str(sock))
    pid = lxd_pid(sock)
    try:
        if pid:
            figs["memory: stack idle (RSS)"].lxd = [rss_mib([pid])]
            figs["memory: stack idle (PSS)"].lxd = [pss_mib([pid])]
            figs["memory: stack idle (alone)"].lxd = [alone_mib([pid])]
        for k, v in lifecycle(lx, conn, f"{tag}img", [], names).items():
            figs[k].lxd = v
        mons = [pid for name, pid in monitor_pids(Path("/var/lib/lxd/containers")).items()
                if name in names]
        if mons:
            figs["memory: lxc monitor per container (RSS)"].lxd = [rss_mib([m]) for m in mons]
            figs["memory: lxc monitor per container (PSS)"].lxd = [pss_mib([m]) for m in mons]
        for k, v in stopped_figures(lx, names).items():
            figs[k].lxd = v
        if pid:
            figs["memory: stack after the bench (RSS)"].lxd = [rss_mib([pid])]
            figs["memory: stack after the bench (PSS)"].lxd = [pss_mib([pid])]
            figs["memory: stack after the bench (alone)"].lxd = [alone_mib([pid])]
    finally:
        for n in names:
            for a in (("stop", "--force", n), ("delete", n), ("delete", n + "c")):
                try:
                    lx(*a)
                except RuntimeError:
                    pass
        try:
            lx("image", "delete", f"{tag}img")
        except RuntimeError:
            pass


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if unit == "MiB" or v < 10 else f"{v:.0f}"


def print_table(figs: list[Figure], many: int, lxd_live: bool) -> None:
    head = (f"{'figure':<50} {'Corral':>8} {'p95':>7} {'goal':>7} "
            f"{'LXD ' + ('(this run)' if lxd_live else '(issue 12)'):>16}  verdict")
    print("\nCorral speed and footprint (busybox, btrfs loop pool, bridge + DHCP, stock lxc "
          "client; the client itself costs about 11 ms a call)")
    print(head)
    print("-" * len(head))  # "bounded by": profiles in docs/performance.md
    for f in figs:
        name = f.name.replace("MANY", str(many))
        med = f.median()
        p95 = pct(f.samples, 95) if len(f.samples) > 1 else None
        if f.lxd:
            lxd = fmt(statistics.median(f.lxd), f.unit)
        else:
            lxd = f.lxd_ref or "-"
        if med is None:
            verdict = "not measured"
        elif f.goal is None:
            verdict = ""
        elif med <= f.goal:
            verdict = "met"
        else:
            verdict = (f"missed by {fmt(med - f.goal, f.unit)} {f.unit}; bounded by: "
                       f"{BOUNDS.get(f.name, 'not profiled')}")
        goal = f"≤{fmt(f.goal, f.unit)}" if f.goal is not None else ""
        print(f"{name + ' (' + f.unit + ')':<50} {fmt(med, f.unit):>8} {fmt(p95, f.unit):>7} "
              f"{goal:>7} {lxd:>16}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="containers per figure")
    ap.add_argument("--many", type=int, default=1000, help="records for the big list")
    ap.add_argument("--vm-runs", type=int, default=3)
    ap.add_argument("--no-vm", action="store_true", help="skip the VM figures (TCG is slow)")
    ap.add_argument("--no-single", action="store_true", help="skip single mode")
    args = ap.parse_args()
    figs = {name: Figure(name, goal, ref, unit) for name, goal, ref, unit in FIGURES}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        os.chmod(d, 0o755)
        base = Path(d)
        run_corral(args, figs, base)
        if not args.no_single:
            run_single(args, figs, base)
        if not args.no_vm:
            run_vm(args, figs, base)
        sock = os.environ.get("LXD_SOCK")
        if sock and Path(sock).is_socket():
            run_lxd(args, figs, Path(sock), base)
    print_table(list(figs.values()), args.many, bool(os.environ.get("LXD_SOCK")))
    print("\nMemory per process, MiB RSS/PSS (separate mode):")
    for line in details:
        print("  " + line)


if __name__ == "__main__":
    main()
