"""Crashes mid-operation (issue 9): operations end, and nothing half-made stays.

Each test kills one process by PID at a named point of a launch or a delete (the service
is started with ``CORRAL_FAULT=<point>``, see ``shared/faults.py``: it sends itself SIGKILL
there, deterministically), or restarts nats-server with launches in flight. Then:

- the client waiting on the operation gets a failure naming what died, never a hang;
- after the dead service is started again, :func:`inventory` agrees everywhere: what the
  API lists equals what the host has (LXC containers, volume subvolumes, KV records of
  the instance and storage services, veths on the bridge, dnsmasq leases) and no
  operation is Running;
- the name of a create that failed is free again.

These tests run on a private stack (their own nats-server and services): they kill and
restart its processes, which the session's shared stack must never see.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import pytest

from shared import codec

from .stack import Stack, private_stack, socket_client, wait_for
from .world import World, make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)

WAIT = 60  # seconds a client may wait for a crashed operation to end (the issue: seconds)


@pytest.fixture(scope="module")
def fstack(request):
    """The private stack; its gateway fails a dead owner's operations after 3 s without a
    responder (CORRAL_OWNER_GRACE), not 6: several tests wait for that on purpose."""
    with private_stack(request, "faults", CORRAL_OWNER_GRACE="3") as s:
        yield s


@pytest.fixture(scope="module")
def fapi(fstack):
    with socket_client(fstack) as client:
        yield client


@pytest.fixture(scope="module")
def world(fstack, fapi, busybox_tarball):
    with make_world(fapi, fstack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


# -- killing and restarting one process, by PID ------------------------------------------


def restart(stack: Stack, name: str, fault: str | None = None, **extra: str) -> None:
    """Stop ``name`` (SIGTERM, by PID) and start it again, armed with ``fault`` if given,
    with ``extra`` environment variables."""
    stack.stop(name)
    env = stack.env
    stack.env = {**env, **extra, **({"CORRAL_FAULT": fault} if fault else {})}
    try:
        stack.start(name)
    finally:
        stack.env = env
    wait_for(stack.ready, 60, what=f"the {name} service to answer")


def wait_dead(stack: Stack, name: str, timeout: float = 30) -> None:
    """Wait until ``name`` killed itself at its fault point; forget its process."""
    proc = stack.procs[name]
    proc.wait(timeout)
    assert proc.returncode == -signal.SIGKILL, f"{name} exited with {proc.returncode}"
    stack.procs.pop(name)


def start_again(stack: Stack, name: str) -> None:
    stack.start(name)
    wait_for(stack.ready, 60, what=f"the {name} service to answer")


def wait_final(api: httpx.Client, op_url: str, timeout: float = WAIT) -> dict:
    """The operation once final; fails the test if it is still running after ``timeout``."""
    started = time.monotonic()
    r = api.get(f"{op_url}/wait", params={"timeout": timeout}, timeout=timeout + 10)
    assert r.status_code == 200, f"waiting for {op_url}: {r.text}"
    op = r.json()["metadata"]
    assert op["status"] not in ("Running", "Pending"), \
        f"operation still {op['status']} after {time.monotonic() - started:.0f}s: {op}"
    return op


# -- the inventory ------------------------------------------------------------------------


async def _kv(url: str, creds: dict[str, str], bucket: str) -> list[dict]:
    nc = await nats.connect(url, **creds)
    try:
        js = nc.jetstream()
        kv = await js.key_value(bucket)
        # The exact key list from the stream's state: nats-py's kv.keys() watches the
        # bucket and may stop before a key that is being rewritten meanwhile (a record
        # written just as the inventory was read went missing from it).
        prefix = f"$KV.{bucket}."
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        out = []
        for subject in info.state.subjects or {}:
            try:
                entry = await kv.get(subject[len(prefix):])
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue  # deleted (its marker is still a message)
            out.append(codec.decode(entry.value))
        return out
    finally:
        await nc.close()


def kv_records(stack: Stack, bucket: str) -> list[dict]:
    creds = stack.nats.connect_options() if hasattr(stack.nats, "connect_options") else {}
    return asyncio.run(_kv(stack.nats.url, creds, bucket))


def inventory(w: World) -> dict[str, set[str]]:
    """What each source says exists, for names with the world's prefix."""
    api, stack, p = w.api, w.stack, w.prefix

    def mine(n: str) -> bool:
        return n.startswith(p + "-")

    objs = api.get("/1.0/instances", params={"recursion": 1}).json()["metadata"]
    lxc_dir = stack.dir / "lxc"
    vols = stack.dir / "storage-pools" / w.pool / "containers"
    recs = [r for r in kv_records(stack, "instances") if mine(r["name"])]
    inv = {
        "api": {o["name"] for o in objs if mine(o["name"])},
        "lxc": {d.name for d in lxc_dir.iterdir() if mine(d.name)} if lxc_dir.is_dir()
        else set(),
        "subvolumes": {d.name for d in vols.iterdir() if mine(d.name)} if vols.is_dir()
        else set(),
        "kv instances": {r["name"] for r in recs},
        "kv volumes": {r["name"] for r in kv_records(stack, "storage_volumes")
                       if r.get("pool") == w.pool and r.get("kind") == "container"
                       and mine(r["name"])},
        "api volumes": {v["name"] for v in api.get(
            f"/1.0/storage-pools/{w.pool}/volumes/container",
            params={"recursion": 1}).json()["metadata"] if mine(v["name"])},
    }
    if w.net:
        brif = Path("/sys/class/net") / w.net / "brif"
        veths = {d.name for d in brif.iterdir()} if brif.is_dir() else set()
        running = {r["expanded_config"].get("volatile.eth0.host_name") for r in recs
                   if r["name"] in {o["name"] for o in objs if o["status"] == "Running"}}
        inv["veths"] = veths
        inv["veths of running instances"] = {v for v in running if v}
        leases = api.get(f"/1.0/networks/{w.net}/leases").json()["metadata"] or []
        inv["leases"] = {lease["hostname"] for lease in leases if mine(lease["hostname"])}
    return inv


def running_operations(api: httpx.Client) -> list[dict]:
    ops = api.get("/1.0/operations", params={"recursion": 1}).json()["metadata"] or {}
    return [o for o in ops.get("running", []) + ops.get("pending", [])]


def inventory_clean(w: World) -> str:
    """"" when every source agrees and no operation runs; else what disagrees."""
    inv = inventory(w)
    names = inv["api"]
    bad = [f"{k}={sorted(v)}" for k, v in inv.items()
           if k not in ("veths", "veths of running instances", "leases") and v != names]
    if "veths" in inv:
        if inv["veths"] != inv["veths of running instances"]:
            bad.append(f"veths={sorted(inv['veths'])} but running instances have "
                       f"{sorted(inv['veths of running instances'])}")
        if not inv["leases"] <= names:
            bad.append(f"leases of missing instances: {sorted(inv['leases'] - names)}")
    ops = running_operations(w.api)
    if ops:
        bad.append("running operations: " + ", ".join(
            f"{o['description']} ({o['status']})" for o in ops))
    return "; ".join(f"api={sorted(names)}" for _ in [0] if bad) + \
        ("; " if bad else "") + "; ".join(bad)


def assert_clean(w: World, timeout: float = 30) -> None:
    """Wait (background cleanups retry) until the inventory is clean; say what is not."""
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = inventory_clean(w)
        if not last:
            return
        time.sleep(0.5)
    raise AssertionError(f"inventory not clean after {timeout}s: {last}")


def launch(w: World, name: str) -> httpx.Response:
    return w.api.post("/1.0/instances", json={
        "name": name, "source": {"type": "image", "alias": w.image},
        "profiles": [w.profile]})


def relaunch_works(w: World, name: str) -> None:
    """The name of a failed create is free again: a create of it succeeds (then delete)."""
    w.wait(launch(w, name))
    w.remove(name)


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["create:after_reserve", "create:after_volume",
                                   "create:after_driver"])
def test_instance_service_killed_during_launch(world, fstack, fapi, point):
    """The gateway notices the owner is gone and fails the operation within seconds
    (the service is not restarted before); the restart then removes what it left."""
    assert_clean(world)
    name = world.name(point.split(":")[1].replace("_", ""))
    restart(fstack, "instance", fault=point)
    r = launch(world, name)
    wait_dead(fstack, "instance")
    # Killed right after reserving, the 202 may die unsent with the process: then the
    # client's request ends with a 503 at once, and the reserved record is the leftover.
    assert r.status_code == 202 or (point == "create:after_reserve"
                                    and r.status_code == 503), r.text
    if r.status_code == 202:
        started = time.monotonic()
        op = wait_final(fapi, r.json()["operation"])
        assert op["status"] == "Failure" and "instance service" in op["err"], op
        assert time.monotonic() - started < 20
    start_again(fstack, "instance")
    assert_clean(world)
    relaunch_works(world, name)
    assert_clean(world)


def test_restarted_instance_service_fails_its_earlier_operations(world, fstack, fapi):
    """Restarted at once (before any gateway sweep), the service itself fails what its
    earlier incarnation left running, with the reason, and cleans up."""
    name = world.name("restarted")
    restart(fstack, "instance", fault="create:after_volume")
    r = launch(world, name)
    assert r.status_code == 202, r.text
    wait_dead(fstack, "instance")
    start_again(fstack, "instance")
    op = wait_final(fapi, r.json()["operation"], timeout=10)
    assert op["status"] == "Failure" and "instance service" in op["err"], op
    assert_clean(world)
    relaunch_works(world, name)


@pytest.mark.skipif(shutil.which("lxc") is None, reason="needs the stock lxc client")
def test_stock_lxc_launch_ends_with_the_error_when_the_service_dies(world, fstack, fapi):
    """The issue's first row as a user saw it: ``lxc launch`` waits on the events
    websocket; killed under it, the instance service no longer makes it hang for good:
    it exits non-zero naming what died, within seconds."""
    name = world.name("lxclaunch")
    restart(fstack, "instance", fault="create:after_volume")
    started = time.monotonic()
    r = subprocess.run(["lxc", "launch", world.image, name, "-p", world.profile],
                       capture_output=True, text=True, timeout=WAIT,
                       env={**fstack.env, "LXD_DIR": str(fstack.dir)})
    took = time.monotonic() - started
    wait_dead(fstack, "instance")
    assert r.returncode != 0 and "instance service" in r.stderr, (r.stdout, r.stderr)
    assert took < 30, f"lxc launch took {took:.0f}s"
    start_again(fstack, "instance")
    assert_clean(world)


@pytest.mark.parametrize("point", ["storage:after_record", "storage:after_volume"])
def test_storage_service_killed_during_launch(world, fstack, fapi, point):
    """The instance service sees the storage process gone within seconds (no 300 s wait),
    fails the create; the volume record and subvolume go when storage starts again, and
    the name can be launched again (no 'Storage volume already exists')."""
    assert_clean(world)
    name = world.name(point.split(":")[1].replace("_", ""))
    restart(fstack, "storage", fault=point)
    r = launch(world, name)
    assert r.status_code == 202, r.text
    wait_dead(fstack, "storage")
    started = time.monotonic()
    op = wait_final(fapi, r.json()["operation"])
    assert op["status"] == "Failure" and "storage service" in op["err"], op
    assert time.monotonic() - started < 20
    start_again(fstack, "storage")
    assert_clean(world)
    relaunch_works(world, name)
    assert_clean(world)


def test_network_service_killed_during_launch(world, fstack, fapi):
    """Asked for the NIC's configuration, the network service dies: the create fails
    within seconds naming it (the request is not left to its deadline) and is undone."""
    assert_clean(world)
    name = world.name("nicconfig")
    restart(fstack, "network", fault="network:nic_config")
    r = launch(world, name)
    assert r.status_code == 202, r.text
    wait_dead(fstack, "network")
    started = time.monotonic()
    op = wait_final(fapi, r.json()["operation"])
    assert op["status"] == "Failure" and "network service" in op["err"], op
    assert time.monotonic() - started < 20
    start_again(fstack, "network")
    assert_clean(world)
    relaunch_works(world, name)
    assert_clean(world)


@pytest.mark.parametrize("point", ["delete:after_driver", "delete:after_volume"])
def test_instance_service_killed_during_delete(world, fstack, fapi, point):
    """A delete that dies half-way is finished by the restarted service: no record whose
    container or volume is gone, and the operation ends."""
    name = world.create(point.split(":")[1].replace("_", ""))
    restart(fstack, "instance", fault=point)
    r = fapi.delete(f"/1.0/instances/{name}")
    assert r.status_code == 202, r.text
    wait_dead(fstack, "instance")
    start_again(fstack, "instance")  # its start fails the operation (the sweep: above)
    op = wait_final(fapi, r.json()["operation"])
    assert op["status"] == "Failure", op
    assert_clean(world)
    assert fapi.get(f"/1.0/instances/{name}").status_code == 404


def test_nats_restart_with_launches_in_flight(world, fstack, fapi):
    """Five launches, nats-server restarted under them: each operation ends (success or
    a clean failure), none hangs, and what failed leaves nothing behind."""
    assert_clean(world)
    names = [world.name(f"nats{i}") for i in range(5)]

    def one(name: str) -> tuple[str, int, dict | None]:
        r = launch(world, name)
        if r.status_code != 202:
            return name, r.status_code, None
        return name, 202, wait_final(fapi, r.json()["operation"], timeout=90)

    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(one, n) for n in names]
        time.sleep(0.05)
        fstack.nats.stop()
        fstack.nats.start()
        results = [f.result(timeout=150) for f in futures]
    wait_for(fstack.ready, 60, what="the stack after the nats-server restart")
    for name, code, op in results:
        assert code in (202, 503), (name, code)
        if op is not None:
            assert op["status"] in ("Success", "Failure"), op
    assert_clean(world, timeout=60)
    for name in names:
        world.remove(name)
    assert_clean(world)


def test_deleted_instance_leaves_no_dhcp_lease(world, fstack, fapi):
    """A started instance takes a DHCP lease; once deleted, dnsmasq's lease file (and so
    the network's leases) no longer has it."""
    name = world.create("lease", start=True)
    leases = f"/1.0/networks/{world.net}/leases"

    def hostnames() -> set[str]:
        return {lease["hostname"] for lease in fapi.get(leases).json()["metadata"] or []}
    wait_for(lambda: name in hostnames(), 60, what="a DHCP lease for the instance")
    lease_file = fstack.dir / "networks" / world.net / "dnsmasq.leases"
    mac = world.get(name)["config"]["volatile.eth0.hwaddr"]
    world.remove(name)
    assert name not in hostnames()
    if lease_file.exists():
        assert mac not in lease_file.read_text().lower()
    assert_clean(world)


async def _make_orphan(stack: Stack, pool: str, name: str, fingerprint: str) -> None:
    """A root volume made the way a create makes it, for an instance that never exists
    (what a crash between the volume and the instance record would leave)."""
    from shared.bus import Bus
    from shared.config import load_config
    from shared.messages.storage import VolumeFromImageRequest

    creds = stack.nats.admin if hasattr(stack.nats, "admin") else None
    bus = Bus(load_config(dir=stack.dir, nats_url=stack.nats.url, request_timeout=30.0,
                          nats_credentials=creds), "tests")
    await bus.connect()
    try:
        await bus.request("storage", "volume_from_image", VolumeFromImageRequest(
            project="default", pool=pool, name=name, fingerprint=fingerprint),
            node=bus.config.node, timeout=60)
    finally:
        await bus.close()


def test_orphan_volume_delete_is_the_last_resort(world, fstack, fapi):
    """``DELETE /1.0/storage-pools/<pool>/volumes/container/<name>`` (``lxc storage volume
    delete``) removes a volume no instance owns; an instance's own volume is refused."""
    orphan = world.name("orphan")
    asyncio.run(_make_orphan(fstack, world.pool, orphan, world.fingerprint))
    vols = f"/1.0/storage-pools/{world.pool}/volumes/container"
    assert fapi.get(f"{vols}/{orphan}").status_code == 200
    owned = world.create("owned")
    r = fapi.delete(f"{vols}/{owned}")
    assert r.status_code == 400 and "delete the instance" in r.json()["error"], r.text
    if shutil.which("lxc"):  # the stock client, as a user would
        r = subprocess.run(["lxc", "storage", "volume", "delete", world.pool,
                            f"container/{orphan}"], capture_output=True, text=True,
                           env={**fstack.env, "LXD_DIR": str(fstack.dir)}, timeout=60)
        assert r.returncode == 0, r.stderr
    else:
        r = fapi.delete(f"{vols}/{orphan}")
        assert r.status_code == 200, r.text
    assert fapi.get(f"{vols}/{orphan}").status_code == 404
    assert not (fstack.dir / "storage-pools" / world.pool / "containers" / orphan).exists()
    assert fapi.delete(f"{vols}/{orphan}").status_code == 404
    image_vol = f"/1.0/storage-pools/{world.pool}/volumes/image/{world.fingerprint}"
    assert fapi.delete(image_vol).status_code == 400
    world.remove(owned)
    assert_clean(world)


def test_storage_start_removes_old_volumes_no_instance_owns(world, fstack, fapi):
    """The careful sweep after a storage start: an instance volume no instance owns, older
    than the grace, goes; an instance's own volume stays."""
    orphan = world.name("sweep")
    asyncio.run(_make_orphan(fstack, world.pool, orphan, world.fingerprint))
    owned = world.create("kept")
    vols = f"/1.0/storage-pools/{world.pool}/volumes/container"
    restart(fstack, "storage", CORRAL_ORPHAN_GRACE="0", CORRAL_ORPHAN_CHECK_DELAY="0.5")
    try:
        wait_for(lambda: fapi.get(f"{vols}/{orphan}").status_code == 404, 30,
                 what="the orphan volume to be swept")
        assert fapi.get(f"{vols}/{owned}").status_code == 200
        assert world.get(owned)["status"] == "Stopped"
    finally:
        restart(fstack, "storage")
    world.remove(owned)
    assert_clean(world)


def test_a_cached_store_loads_every_key_when_it_opens(fstack):
    """What a restarted service loads must be every record: nats-py's ``kv.keys()`` may
    stop early under load (a restarted instance service then lost a profile). Three
    times twenty caches of a bucket opened at once must each hold all its keys."""
    from shared.bus import Bus
    from shared.config import load_config
    from shared.state import Store

    async def scenario() -> list[int]:
        creds = fstack.nats.admin if hasattr(fstack.nats, "admin") else None
        bus = Bus(load_config(dir=fstack.dir, nats_url=fstack.nats.url,
                              nats_credentials=creds), "tests")
        await bus.connect()
        try:
            bucket = "t" + os.urandom(4).hex()
            store = await Store(bus, bucket, history=1).open()
            await asyncio.gather(*(store.put(f"k{i}", {"i": i}) for i in range(300)))
            await store.delete("k0")
            counts: list[int] = []
            for _ in range(3):
                caches = await asyncio.gather(*(Store(bus, bucket, cache=True).open()
                                                for _ in range(20)))
                counts += [len(c.cached()) for c in caches]
            await bus.js.delete_key_value(bucket)
            return counts
        finally:
            await bus.close()

    assert asyncio.run(scenario()) == [299] * 60
