"""Several Corral "nodes" on one nats-server, for tests of routing and placement.

Each node is a :class:`~tests.stack.Stack` (every service and a gateway) with its own
``CORRAL_DIR`` and ``CORRAL_NODE``, all with ``CORRAL_CLUSTER=1`` and sharing ONE
nats-server, so they share the KV buckets as the nodes of a NATS cluster do. No network
namespaces: what this tests is which node answers (the namespaced cluster of ``make
cluster-up`` has its own tests). Each node's gateway writes its member record (``members``
bucket, shared/cluster.py); :class:`Heartbeats` writes those of members that run nothing
(an online member whose services do not answer, one that goes offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import cluster
from shared.bus import Bus
from shared.config import load_config
from shared.state import Store

from .stack import SERVICES, NatsServer, Stack, wait_for
from .world import World, make_world


class Heartbeats:
    """A thread that keeps chosen member records fresh in the ``members`` bucket."""

    def __init__(self, nats: NatsServer, corral_dir: Path, interval: float = 0.5) -> None:
        self.config = load_config(dir=corral_dir, nats_url=nats.url, request_timeout=5.0,
                                  nats_credentials=nats.admin)
        self.interval = interval
        self.beating: dict[str, dict[str, Any]] = {}  # node -> resources
        self.extra: dict[str, dict[str, Any]] = {}  # node -> config, groups
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def beat(self, node: str, config: dict[str, str] | None = None,
             groups: list[str] | None = None, **resources: Any) -> None:
        """Keep ``node`` online, reporting ``resources`` (cpus, memory_free, instances...)
        and LXD's member ``config`` and ``groups`` when given."""
        self.beating[node] = {"cpus": 2, "memory_total": 4 << 30, "memory_free": 2 << 30,
                              **resources}
        self.extra[node] = {k: v for k, v in (("config", config), ("groups", groups))
                            if v is not None}

    def silence(self, node: str) -> None:
        """No more heartbeats for ``node``: OFFLINE once its last one is old enough."""
        self.beating.pop(node, None)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        bus = Bus(self.config, "tests-heartbeats")
        await bus.connect()
        store: Store = await cluster.open_members(bus)
        try:
            while not self._stop.is_set():
                for node, res in list(self.beating.items()):
                    member = cluster.Member(name=node, url=f"https://{node}:8443",
                                            heartbeat=time.time(),
                                            resources=cluster.Resources(**res))
                    await store.put(node, {**member.model_dump(),
                                           **self.extra.get(node, {})})
                await asyncio.sleep(self.interval)
        finally:
            await bus.close()


class Node:
    """One node: its stack, an HTTP client on its socket."""

    def __init__(self, name: str, stack: Stack) -> None:
        self.name = name
        self.stack = stack
        self.api = httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.socket)),
                                base_url="http://corral", timeout=60)

    def close(self) -> None:
        self.api.close()


@contextlib.contextmanager
def cluster_stacks(request, count: int = 2, **env: str) -> Iterator[tuple[list[Node],
                                                                           Heartbeats]]:
    """``count`` nodes ``node1``.. on one nats-server, each running every service and a
    gateway, and a :class:`Heartbeats` for made-up members; ended
    by PID and their temp dir removed at the end (logs kept when the session failed)."""
    tmp = tempfile.TemporaryDirectory(prefix="corral-placement-")
    base = Path(tmp.name)
    server = NatsServer(base / "nats", base / "node1")
    server.start()
    beats = Heartbeats(server, base / "node1")
    nodes: list[Node] = []
    try:
        beats.start()
        for i in range(1, count + 1):
            name = f"node{i}"
            s = Stack(base / name, server, CORRAL_CLUSTER="1", CORRAL_NODE=name,
                      CORRAL_CLUSTER_OFFLINE_THRESHOLD="3", **env)
            for d in (s.dir.parent, s.dir):  # unprivileged roots traverse their parents
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(d.stat().st_mode | 0o011)
            for svc in (*SERVICES, "gateway"):
                s.start(svc)
            nodes.append(Node(name, s))
        for n in nodes:
            wait_for(n.stack.ready, 180, what=f"{n.name} to answer")
        yield nodes, beats
    finally:
        beats.stop()
        for n in nodes:
            n.close()
            n.stack.stop_all()
        server.stop()
        _unmount_under(base)
        if request.session.testsfailed:
            keep = Path(tempfile.mkdtemp(prefix="corral-placement-logs-"))
            for log in base.glob("*/logs"):
                shutil.copytree(log, keep / log.parent.name, dirs_exist_ok=True)
            print(f"\ncorral: placement stacks' logs kept in {keep}")
        tmp.cleanup()


@contextlib.contextmanager
def node_world(nodes: list[Node], busybox_tarball: Path) -> Iterator[World]:
    """A world (a dir pool, no network) made through node1. Its pool is made by node1's
    storage service (its gateway asks its own node); the other nodes' storage services
    mount the pools they know when they start, so they are started again. (The profile
    reaches the other nodes' instance services by itself: shared/kv_follow.py.)"""
    first = nodes[0]
    with make_world(first.api, first.stack, busybox_tarball, network=False,
                    pool_driver="dir") as w:
        for node in nodes[1:]:
            node.stack.stop("storage")
            node.stack.start("storage")
            wait_for(node.stack.ready, 60, what=f"{node.name}'s storage service")
        yield w



class SharedNodes:
    """The two nodes every :func:`two_node_fixtures` module shares (one start and stop
    of 2 x 7 processes instead of one per module, ~7 s each): started by the first such
    module, checked and repaired by each next one, stopped after the last one (so the
    rest of the session does not carry them), or at the session's end after a failure
    (conftest's ``shared_two_nodes``)."""

    def __init__(self) -> None:
        self.exits = contextlib.ExitStack()
        self.value: tuple[list[Node], Heartbeats] | None = None

    def acquire(self, request) -> tuple[list[Node], Heartbeats]:  # type: ignore[no-untyped-def]
        if self.value is None:
            self.value = self.exits.enter_context(cluster_stacks(request, 2))
        else:
            self._repair()
        return self.value

    def _repair(self) -> None:
        """What a module before left must not be this one's: every process of both nodes
        runs (a test that kills one starts it again; a failed one may not have), no
        made-up member keeps heart-beating."""
        assert self.value is not None
        nodes, beats = self.value
        for node in list(beats.beating):
            beats.silence(node)
        asyncio.run(_forget_members(beats.config, {n.name for n in nodes}))
        for n in nodes:
            for svc in (*SERVICES, "gateway"):
                proc = n.stack.procs.get(svc)
                if proc is None or proc.poll() is not None:
                    n.stack.procs.pop(svc, None)
                    n.stack.start(svc)
        for n in nodes:
            wait_for(n.stack.ready, 120, what=f"{n.name} to answer")

    def release(self, request) -> None:  # type: ignore[no-untyped-def]
        """Stop the nodes unless a module after this one needs them."""
        items = request.session.items
        mine = [i for i, item in enumerate(items) if item.module is request.module]
        if mine and any(getattr(item.module, "__name__", "") in TWO_NODE_MODULES
                        for item in items[mine[-1] + 1:]):
            return
        self.close()

    def close(self) -> None:
        self.value = None
        self.exits.close()


TWO_NODE_MODULES: set[str] = set()  # filled by two_node_fixtures()


async def _forget_members(config: Any, keep: set[str]) -> None:
    """Delete the member records of made-up members (a module's Heartbeats): offline, they
    would make the next module's cluster-wide pool create fail ("member ... is offline")."""
    bus = Bus(config, "tests-forget-members")
    await bus.connect()
    try:
        store = await cluster.open_members(bus)
        for name in await store.keys():
            if name not in keep:
                await store.delete(name)
    finally:
        await bus.close()


def two_node_fixtures() -> tuple[Any, Any]:
    """The module-scoped ``cluster`` (two nodes: ``(nodes, beats)``) and ``world``
    (:func:`node_world`) fixtures the two-node test modules share; each module binds them
    (``cluster, world = two_node_fixtures()``). The nodes are the session's
    :class:`SharedNodes` (conftest's ``shared_two_nodes``); the world is each module's
    own (its instances, counted by placement, never another module's)."""
    TWO_NODE_MODULES.add(sys._getframe(1).f_globals["__name__"])

    @pytest.fixture(scope="module")
    def cluster(request, shared_two_nodes):  # type: ignore[no-untyped-def]
        yield shared_two_nodes.acquire(request)
        shared_two_nodes.release(request)

    @pytest.fixture(scope="module")
    def world(cluster, busybox_tarball):  # type: ignore[no-untyped-def]
        nodes, _beats = cluster
        with node_world(nodes, busybox_tarball) as w:
            yield w

    return cluster, world


def _unmount_under(base: Path) -> None:
    """Unmount what the nodes left mounted under ``base`` (a node mounts the pools it
    knows, also those another node made and deleted), deepest first."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    prefix = str(base) + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
