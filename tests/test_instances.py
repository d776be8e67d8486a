"""The instance service through the real stack: HTTP, the corral CLI, real containers.

A module fixture makes (``tests/world.py``) a btrfs loop pool, a bridge network (no NAT:
traffic stays on the bridge) and a profile through the API, and imports the busybox image.
Everything carries one unique prefix and is removed at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from shared.bus import Bus

from .stack import BIN, wait_for
from .world import World, lxc, make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)

REF_KEYS = {"architecture", "config", "devices", "ephemeral", "profiles", "stateful",
            "description", "created_at", "expanded_config", "expanded_devices", "name",
            "status", "status_code", "last_used_at", "location", "type", "project"}


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs") as w:
        yield w


def exec_in(stack, name: str, cmd: list[str]) -> tuple[int, str]:
    """Run a command in the container through the LXC driver (pipes, no network)."""
    from services.instance.drivers.lxc import LXCDriver

    p = LXCDriver(stack.dir / "lxc").exec_start(name, cmd)
    os.close(p.stdin_fd)
    out = b""
    while chunk := os.read(p.stdout_fd, 65536):
        out += chunk
    os.close(p.stdout_fd)
    os.close(p.stderr_fd)
    return p.wait(), out.decode(errors="replace")


def ipv4(world: World, name: str) -> str | None:
    net = (world.live(name).get("network") or {}).get("eth0") or {}
    found = [a["address"] for a in net.get("addresses", []) if a["family"] == "inet"]
    return found[0] if found else None


def corral(stack, *args, **kw):
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=120, **kw)


# -- tests ---------------------------------------------------------------------------------

def test_launch_over_http_shape_state_and_idmap(world, api):
    name = world.create("a")
    r = api.get(f"/1.0/instances/{name}")
    inst = r.json()["metadata"]
    assert set(inst) == REF_KEYS and r.headers.get("ETag")
    assert inst["status"] == "Stopped" and inst["profiles"] == [world.profile]
    cfg = inst["config"]
    for k in ("volatile.base_image", "volatile.uuid", "volatile.idmap.current",
              "volatile.eth0.hwaddr", "volatile.eth0.host_name", "image.os"):
        assert cfg.get(k), k
    assert inst["expanded_devices"]["root"]["pool"] == world.pool
    assert (world.volume(name) / "rootfs").is_dir()
    assert (world.volume(name) / "rootfs/etc/hostname").read_text().strip() == name

    op = world.state(name, "start")
    assert op["description"] == "Starting instance"
    assert op["resources"] == {"instances": [f"/1.0/instances/{name}"]}
    st = world.live(name)
    assert st["status"] == "Running" and st["pid"] > 0 and st["processes"] > 0
    assert st["memory"]["usage"] > 0
    rows = [line.split() for line in Path(f"/proc/{st['pid']}/uid_map").read_text()
            .splitlines()]
    assert rows[0][0] == "0" and rows[0][1] != "0"  # unprivileged: root is not host root
    wait_for(lambda: ipv4(world, name), 30, what="a DHCP address on eth0")
    assert world.get(name)["config"]["volatile.eth0.hwaddr"] == cfg["volatile.eth0.hwaddr"]
    eth0 = world.live(name)["network"]["eth0"]  # the driver's own NIC record, not LXC lines
    assert (eth0["host_name"], eth0["hwaddr"]) == (cfg["volatile.eth0.host_name"],
                                                   cfg["volatile.eth0.hwaddr"])

    r = api.put(f"/1.0/instances/{name}/state", json={"action": "start"})
    assert r.status_code == 400 and r.json()["error"] == "The instance is already running"
    r = api.delete(f"/1.0/instances/{name}")
    assert r.status_code == 400
    assert r.json()["error"] == "The instance is currently running, stop it first"
    world.state(name, "freeze")
    assert world.live(name)["status"] == "Frozen"
    world.state(name, "unfreeze")
    world.state(name, "stop", force=True)
    r = api.put(f"/1.0/instances/{name}/state", json={"action": "stop"})
    assert r.status_code == 400 and r.json()["error"] == "The instance is already stopped"
    world.wait(api.delete(f"/1.0/instances/{name}"))
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    assert not world.lxc_dir(name).exists() and not world.volume(name).exists()


def test_privileged_container(world):
    name = world.create("priv", start=True, config={"security.privileged": "true"})
    pid = world.live(name)["pid"]
    rows = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert rows[:2] == ["0", "0"]
    assert world.get(name)["config"]["volatile.idmap.current"] == "[]"


def test_two_containers_reach_each_other_by_name(world, stack):
    a = world.create("pa", start=True)
    b = world.create("pb", start=True)
    for n in (a, b):
        wait_for(lambda n=n: ipv4(world, n), 30, what=f"DHCP address of {n}")
    wait_for(lambda: exec_in(stack, a, ["ping", "-c1", "-W1", b])[0] == 0, 30,
             interval=0.5, what=f"{a} pings {b} by name")


def test_live_limits(world, stack, api):
    name = world.create("lim", start=True)
    pid = world.live(name)["pid"]
    r = api.patch(f"/1.0/instances/{name}", json={"config": {
        "limits.memory": "64MiB", "limits.memory.swap": "false", "limits.processes": "40",
        "limits.cpu.allowance": "20ms/100ms"}})
    world.wait(r)
    cg = {line.split(":")[1]: line.split(":")[2] for line in
          Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.count(":") >= 2}
    base = Path("/sys/fs/cgroup")
    mem = base / "memory" / cg["memory"].lstrip("/")
    assert int((mem / "memory.limit_in_bytes").read_text()) == 64 * 2**20
    cpu = next(base / k / cg[k].lstrip("/") for k in cg if "cpu" in k.split(",")
               and (base / k).exists())
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"
    # A process allocating past the limit is killed by the OOM killer.
    code, _ = exec_in(stack, name, ["sh", "-c", "head -c 200m /dev/zero | tail > /dev/null"])
    assert code != 0
    # A fork bomb stops at pids.max. (The sleeps do not hold the exec's stdout: it ends
    # once counted, not 5 s later.)
    code, out = exec_in(stack, name, ["sh", "-c",
                                      "for i in $(seq 80); do sleep 5 >/dev/null & done "
                                      "2>/dev/null; ls /proc | grep -c '^[0-9]'"])
    assert int(out.strip() or 0) <= 40
    # An invalid value changes nothing, neither KV nor cgroups.
    before = world.get(name)["config"]
    r = api.patch(f"/1.0/instances/{name}", json={"config": {"limits.memory": "lots"}})
    assert r.status_code == 400
    assert world.get(name)["config"] == before
    assert int((mem / "memory.limit_in_bytes").read_text()) == 64 * 2**20


def test_bad_input_leaves_nothing(world, api):
    base = {"source": {"type": "image", "alias": world.image}, "profiles": [world.profile]}
    bad = [({"name": "1abc"}, 400), ({"name": "a_b"}, 400), ({"name": "x" * 64}, 400),
           ({"name": f"{world.prefix}-x", "source": {"alias": "nope-no-image"}}, 404),
           ({"name": f"{world.prefix}-x", "profiles": ["nope-no-profile"]}, 404),
           ({"name": f"{world.prefix}-x", "config": {"limits.memory": "lots"}}, 400),
           ({"name": f"{world.prefix}-x", "config": {"bogus.key": "1"}}, 400),
           ({"name": f"{world.prefix}-x", "profiles": []}, 400),
           ({"name": f"{world.prefix}-x", "type": "virtual-machine"}, 400)]
    for body, code in bad:
        r = api.post("/1.0/instances", json={**base, **body})
        assert r.status_code == code, (body, r.text)
        assert r.json()["type"] == "error"
    r = api.post("/1.0/instances", json={**base, "name": f"{world.prefix}-x",
                                         "profiles": []})
    assert r.json()["error"] == "No root device could be found"
    r = api.post("/1.0/instances", content=b"{not json")
    assert r.status_code == 400
    name = world.create("dup")
    r = api.post("/1.0/instances", json={**base, "name": name})
    assert r.status_code == 409
    assert api.get(f"/1.0/instances/{world.prefix}-x").status_code == 404
    assert not world.lxc_dir(f"{world.prefix}-x").exists()
    assert not world.volume(f"{world.prefix}-x").exists()


def test_create_without_a_name_picks_a_free_random_one(world, api):
    """LXD names an unnamed instance adjective-noun (petname); Corral answered 400."""
    r = api.post("/1.0/instances", json={"source": {"type": "image", "alias": world.image},
                                         "profiles": [world.profile]})
    assert r.status_code == 202, r.text
    name = r.json()["metadata"]["resources"]["instances"][0].rsplit("/", 1)[1]
    try:
        world.wait(r)
        assert re.fullmatch(r"[a-z]+-[a-z]+", name), name
        assert world.get(name)["status"] == "Stopped" and world.lxc_dir(name).exists()
    finally:  # not under the world's prefix: its teardown would not see it
        world.remove(name)


def test_json_create_without_a_content_type_is_a_create(world, api):
    """LXD reads a POST /1.0/instances body as a backup only when it says
    application/octet-stream; a JSON body sent with no Content-Type header is a create.
    (aiohttp reports octet-stream for a missing header: this was read as a bad backup.)"""
    import json as _json

    name = world.name("noct")
    body = {"name": name, "source": {"type": "image", "alias": world.image},
            "profiles": [world.profile]}
    r = api.post("/1.0/instances", content=_json.dumps(body).encode())  # no header
    assert "content-type" not in r.request.headers
    assert r.status_code == 202, r.text
    world.wait(r)
    assert world.get(name)["status"] == "Stopped"


def test_list_recursion_filter_and_users(world, api):
    a = world.create("la", start=True)
    b = world.create("lb")
    urls = api.get("/1.0/instances").json()["metadata"]
    assert f"/1.0/instances/{a}" in urls and f"/1.0/instances/{b}" in urls
    full = {i["name"]: i for i in api.get("/1.0/instances?recursion=2").json()["metadata"]}
    assert full[a]["state"]["pid"] > 0 and full[a]["snapshots"] is None
    assert full[b]["status"] == "Stopped"
    r = api.get("/1.0/instances", params={"recursion": 1,
                                          "filter": f"name eq {a} or name eq {b}"})
    assert sorted(i["name"] for i in r.json()["metadata"]) == sorted([a, b])
    r = api.get("/1.0/instances", params={"recursion": 1,
                                          "filter": f"status eq running and name eq {a}"})
    assert [i["name"] for i in r.json()["metadata"]] == [a]
    r = api.get("/1.0/instances", params={"filter": f"not name eq {a} and name eq {b}"})
    assert r.json()["metadata"] == [f"/1.0/instances/{b}"]
    prof = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]
    assert f"/1.0/instances/{a}" in prof["used_by"]
    assert api.delete(f"/1.0/profiles/{world.profile}").status_code == 409
    net = api.get(f"/1.0/networks/{world.net}").json()["metadata"]
    assert f"/1.0/instances/{a}" in net["used_by"]


def test_list_recursion1_shows_every_change_at_once(world, api, stack):
    """recursion=1 joins per-instance JSON cached by (KV revision, status): an edit, a
    start, a stop from inside the container, a freeze behind the service's back and a
    rename all show in the very next list, and each object is the one GET returns."""
    import lxc as pylxc

    name = world.create("lc")

    def listed() -> dict[str, dict]:
        r = api.get("/1.0/instances?recursion=1")
        assert r.status_code == 200 and r.json()["status_code"] == 200
        return {i["name"]: i for i in r.json()["metadata"]}

    first = listed()
    assert first[name] == world.get(name) and first[name]["status"] == "Stopped"
    assert listed() == first  # served from the cache: the same objects
    world.wait(api.patch(f"/1.0/instances/{name}", json={"description": "edited"}))
    assert listed()[name]["description"] == "edited" == world.get(name)["description"]
    world.state(name, "start")
    assert listed()[name]["status"] == "Running"
    c = pylxc.Container(name, str(stack.dir / "lxc"))
    assert c.freeze()  # as lxc-freeze, not through the service
    try:
        assert (listed()[name]["status"], listed()[name]["status_code"]) == ("Frozen", 110)
    finally:
        assert c.unfreeze()
    assert listed()[name]["status"] == "Running"
    exec_in(stack, name, ["poweroff"])  # from inside: busybox init shuts down
    assert c.wait("STOPPED", 15)
    assert listed()[name]["status"] == "Stopped"
    out = lxc(stack, "list", name, "--format", "csv", "-c", "ns").stdout
    assert out.strip() == f"{name},STOPPED"
    new = world.name("lc2")
    world.wait(api.post(f"/1.0/instances/{name}", json={"name": new}))
    after = listed()
    assert name not in after and after[new] == world.get(new)
    world.wait(api.delete(f"/1.0/instances/{new}"))
    assert new not in listed()


def test_rename_and_put_with_etag(world, api):
    name = world.create("rn")
    r = api.get(f"/1.0/instances/{name}")
    etag = r.headers["ETag"]
    inst = r.json()["metadata"]
    body = {k: inst[k] for k in ("config", "devices", "profiles", "description")}
    body["description"] = "changed"
    assert api.put(f"/1.0/instances/{name}", json=body,
                   headers={"If-Match": '"nope"'}).status_code == 412
    world.wait(api.put(f"/1.0/instances/{name}", json=body, headers={"If-Match": etag}))
    assert world.get(name)["description"] == "changed"
    new = world.name("rn2")
    world.wait(api.post(f"/1.0/instances/{name}", json={"name": new}))
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    assert world.get(new)["description"] == "changed"
    world.state(new, "start")
    assert world.live(new)["pid"] > 0


def test_cli_launch_info_config_profile_delete(world, stack):
    name = world.name("cli")
    r = corral(stack, "launch", world.image, name, "-p", world.profile,
               "-c", "user.test=1")
    assert r.returncode == 0, r.stderr
    r = corral(stack, "info", name)
    assert r.returncode == 0 and "RUNNING" in r.stdout and "PID" in r.stdout
    r = corral(stack, "config", "set", name, "limits.memory=96MiB")
    assert r.returncode == 0, r.stderr
    r = corral(stack, "config", "get", name, "limits.memory")
    assert r.stdout.strip() == "96MiB"
    r = corral(stack, "config", "set", name, "limits.memory=lots")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and \
        len(r.stderr.strip().splitlines()) == 1
    r = corral(stack, "list", "--format", "csv")
    assert any(line.startswith(f"{name},RUNNING") for line in r.stdout.splitlines())
    r = corral(stack, "profile", "show", world.profile)
    assert r.returncode == 0 and f"/1.0/instances/{name}" in r.stdout
    r = corral(stack, "delete", name)
    assert r.returncode == 1 and "stop it first" in r.stderr
    r = corral(stack, "delete", "--force", name)
    assert r.returncode == 0, r.stderr
    assert not world.lxc_dir(name).exists()


def test_cli_profile_create_and_default_devices(world, stack, api):
    pname = f"{world.prefix}dp"
    r = corral(stack, "profile", "create", pname)
    assert r.returncode == 0, r.stderr
    try:
        r = corral(stack, "profile", "edit", pname, input=(
            f"devices:\n  root: {{type: disk, path: /, pool: {world.pool}}}\n"))
        assert r.returncode == 0, r.stderr
        prof = api.get(f"/1.0/profiles/{pname}").json()["metadata"]
        assert prof["devices"]["root"]["pool"] == world.pool
        name = world.create("pf")
        r = corral(stack, "profile", "add", name, pname)
        assert r.returncode == 0, r.stderr
        assert world.get(name)["profiles"] == [world.profile, pname]
        r = corral(stack, "profile", "remove", name, pname)
        assert r.returncode == 0, r.stderr
    finally:
        api.delete(f"/1.0/profiles/{pname}")


def test_kill_during_create_leaves_nothing_half_made(world, stack, api):
    name = world.name("crash")
    r = api.post("/1.0/instances", json={"name": name, "profiles": [world.profile],
                                         "source": {"type": "image", "alias": world.image}})
    assert r.status_code == 202
    wait_for(lambda: world.volume(name).exists() or world.lxc_dir(name).exists(), 30,
             interval=0.005, what="the create to be under way")
    stack.procs["instance"].kill()
    stack.procs["instance"].wait(10)
    stack.start("instance")
    wait_for(lambda: api.get("/1.0/instances").status_code == 200, 30)

    def settled() -> bool:
        r = api.get(f"/1.0/instances/{name}")
        if r.status_code == 404:  # cleaned up: nothing may be left
            return not world.lxc_dir(name).exists() and not world.volume(name).exists()
        return r.json()["metadata"]["status"] == "Stopped"  # it had finished: complete
    wait_for(settled, 60, what="reconcile after a crash")
    if api.get(f"/1.0/instances/{name}").status_code == 200:
        assert world.lxc_dir(name).exists() and world.volume(name).exists()


def test_reconcile_removes_interrupted_create(world, stack, api):
    """A record stuck in "Creating" with its volume and LXC dir made: all removed."""
    name = world.create("stuck")  # complete; then made to look interrupted
    stack.stop("instance")

    async def mark() -> None:
        from shared.config import load_config
        from shared.state import Store, key

        b = await Bus(load_config(dir=stack.dir, nats_url=stack.nats.url,
                                  nats_credentials=stack.nats.admin), "t").connect()
        try:
            store = await Store(b, "instances").open()
            value, rev = await store.get(key("default", name))
            await store.update(key("default", name), {**value, "status": "Creating"}, rev)
        finally:
            await b.close()

    asyncio.run(mark())
    stack.start("instance")
    wait_for(lambda: api.get(f"/1.0/instances/{name}").status_code == 404 and
             not world.volume(name).exists() and not world.lxc_dir(name).exists(), 60,
             what="the interrupted create to be cleaned up")
