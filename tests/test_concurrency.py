"""Concurrency rows of issue 9 against a real stack: 50 launches of one image at once and
50 deletes at once (none half-made), and FIFOs/devices in a container that used to hold
the instance service's worker threads forever.

The batch is 50 busybox containers on a small host: every container carries the test's
prefix and the module fixture removes all of them (``make_world``), also on failure.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)

BATCH = 50


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs",
                    pool_config={"size": "1GiB"}) as w:
        yield w


def exec_in(stack, name: str, cmd: list[str]) -> int:
    """Run a command in the container through the LXC driver (pipes only)."""
    from services.instance.drivers.lxc import LXCDriver

    p = LXCDriver(stack.dir / "lxc").exec_start(name, cmd)
    for fd in (p.stdin_fd, p.stdout_fd, p.stderr_fd):
        os.close(fd)
    return p.wait()


async def _async_api(stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(stack.socket)),
                             base_url="http://corral", timeout=300)


async def _run_op(client: httpx.AsyncClient, method: str, url: str, **kw) -> dict:
    """One request that answers with an operation; its final state (or the error)."""
    r = await client.request(method, url, **kw)
    if r.status_code != 202:
        return {"status": "Refused", "err": f"{r.status_code} {r.text}"}
    op = (await client.get(f"{r.json()['operation']}/wait",
                           params={"timeout": 280})).json()["metadata"]
    return op


def test_fifty_launches_and_fifty_deletes_at_once(world, stack, api):
    names = [world.name(f"c{i:02d}") for i in range(BATCH)]

    async def launch_all() -> list[dict]:
        async with await _async_api(stack) as client:
            return await asyncio.gather(*(_run_op(client, "POST", "/1.0/instances", json={
                "name": n, "source": {"type": "image", "alias": world.image},
                "profiles": [world.profile], "start": True}) for n in names))

    t0 = time.monotonic()
    ops = asyncio.run(launch_all())
    took = time.monotonic() - t0
    failed = {n: op.get("err") for n, op in zip(names, ops, strict=True)
              if op["status"] != "Success"}
    assert failed == {}, f"{len(failed)} of {BATCH} launches failed: {failed}"
    listed = {o["name"]: o["status"] for o in api.get(
        "/1.0/instances", params={"recursion": 1}).json()["metadata"]}
    assert all(listed.get(n) == "Running" for n in names), listed
    image = api.get(f"/1.0/images/{world.fingerprint}").json()["metadata"]
    assert image["last_used_at"] > "2000"  # stamped (once or twice, not 50 races)
    print(f"\n{BATCH} launches at once: {took:.1f} s")

    async def stop_then_delete_all() -> tuple[list[dict], list[dict]]:
        async with await _async_api(stack) as client:
            stops = await asyncio.gather(*(_run_op(
                client, "PUT", f"/1.0/instances/{n}/state",
                json={"action": "stop", "force": True}) for n in names))
            deletes = await asyncio.gather(*(_run_op(client, "DELETE", f"/1.0/instances/{n}")
                                             for n in names))
            return stops, deletes

    stops, deletes = asyncio.run(stop_then_delete_all())
    assert [op.get("err") for op in stops if op["status"] != "Success"] == []
    assert [op.get("err") for op in deletes if op["status"] != "Success"] == []
    left = {u.rsplit("/", 1)[-1] for u in api.get("/1.0/instances").json()["metadata"]}
    assert not left & set(names)
    for n in names:  # none half-made: no LXC definition, no volume left
        assert not world.lxc_dir(n).exists(), n
        assert not world.volume(n).exists(), n
    vols = api.get(f"/1.0/storage-pools/{world.pool}/volumes").json()["metadata"]
    assert not [v for v in vols if any(v.endswith(f"/{n}") for n in names)]


def test_fifos_and_devices_never_hold_a_worker(world, stack, api):
    """8 pushes to a FIFO used to block one thread each forever (no reader), until lists
    and exec of every instance timed out. Now each is a 400 at once and all else works."""
    name = world.create("fifo", start=True)
    assert exec_in(stack, name, ["mkfifo", "/tmp/f"]) == 0

    async def push_many() -> list[httpx.Response]:
        async with await _async_api(stack) as client:
            return await asyncio.gather(*(client.post(
                f"/1.0/instances/{name}/files", params={"path": "/tmp/f"},
                content=b"hello\n", headers={"Content-Type": "application/octet-stream"},
                timeout=15) for _ in range(8)))

    t0 = time.monotonic()
    answers = asyncio.run(push_many())
    assert time.monotonic() - t0 < 10
    for r in answers:
        assert r.status_code == 400, r.text
        assert "named pipe" in r.json()["error"]
    r = api.get(f"/1.0/instances/{name}/files", params={"path": "/tmp/f"}, timeout=15)
    assert r.status_code == 400 and "named pipe" in r.json()["error"], r.text
    r = api.post(f"/1.0/instances/{name}/files", params={"path": "/dev/null"},
                 content=b"x", timeout=15)
    assert r.status_code == 400 and "character device" in r.json()["error"], r.text
    # The rest still answers: list, state, exec, and a normal push and pull.
    assert api.get("/1.0/instances", params={"recursion": 2}, timeout=15).status_code == 200
    assert exec_in(stack, name, ["true"]) == 0
    r = api.post(f"/1.0/instances/{name}/files", params={"path": "/tmp/ok"},
                 content=b"fine\n", timeout=15)
    assert r.status_code == 200, r.text
    assert api.get(f"/1.0/instances/{name}/files", params={"path": "/tmp/ok"},
                   timeout=15).content == b"fine\n"
    world.remove(name)


def test_clean_stops_that_wait_never_starve_lists_and_exec(world, stack, api):
    """8 clean stops of containers that ignore the halt signal each wait out their
    timeout in a thread; they used to fill the shared pool (6 threads on 2 cores), and
    list, state and exec of every instance waited with them. Now they wait on threads of
    their own."""
    names = [world.create(f"deaf{i}", start=True,
                          config={"raw.lxc": "lxc.signal.halt = SIGCONT"})  # ignored: no halt
             for i in range(8)]
    other = world.create("awake", start=True)

    async def scene() -> tuple[list[dict], list[float]]:
        async with await _async_api(stack) as client:
            stops = asyncio.gather(*(_run_op(client, "PUT", f"/1.0/instances/{n}/state",
                                             json={"action": "stop", "timeout": 12})
                                      for n in names))
            await asyncio.sleep(2)  # every stop is waiting now
            took = []
            for url, params in (("/1.0/instances", {"recursion": 2}),
                                (f"/1.0/instances/{other}/state", {}),
                                (f"/1.0/instances/{other}/files", {"path": "/etc/hostname"})):
                t0 = time.monotonic()
                r = await client.get(url, params=params, timeout=8)
                assert r.status_code == 200, r.text
                took.append(time.monotonic() - t0)
            t0 = time.monotonic()
            op = await _run_op(client, "POST", f"/1.0/instances/{other}/exec", json={
                "command": ["true"], "wait-for-websocket": False, "interactive": False})
            assert op["status"] == "Success", op
            took.append(time.monotonic() - t0)
            return await stops, took

    try:
        ops, took = asyncio.run(scene())
        assert max(took) < 3, took
        assert all(op["status"] == "Success" for op in ops), ops  # forced after the timeout
    finally:
        for n in [*names, other]:
            world.remove(n)
