"""Virtual machines under the instance API: real QEMU (TCG) under a real libvirtd.

One world (btrfs pool, bridge with dnsmasq, profile, busybox container image) plus the
busybox VM image; ONE VM booted for the module and reused (exec, files, console,
limits, ping, restart of the instance service), a second one driven through the stock
``lxc`` client and the CLI. libvirtd is started through ``deploy/libvirt.sh up`` with the
session's CORRAL_DIR and stopped at the end only if that started it. Everything carries
the world's prefix and is removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .stack import BIN, wait_for
from .world import make_world, wait_op

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[1]
if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64") \
        or not shutil.which("libvirtd"):
    pytest.skip("needs root, qemu-system-x86 and libvirt (deploy/libvirt.sh up)",
                allow_module_level=True)


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libvirtd(stack, api):
    env = {**os.environ, "CORRAL_DIR": str(stack.dir), "CORRAL_APT_UPDATED": "1"}
    subprocess.run([str(REPO / "deploy/libvirt.sh"), "up"], env=env, check=True,
                   capture_output=True)
    try:
        wait_for(lambda: "qemu" in api.get("/1.0").json()["metadata"]["environment"]
                 ["driver"], 30, what="GET /1.0 to list the qemu driver")
        yield
    finally:  # stops only the daemons this `up` started (recorded under CORRAL_DIR/run)
        subprocess.run([str(REPO / "deploy/libvirt.sh"), "down"], env=env, check=False,
                       capture_output=True)


@pytest.fixture(scope="module")
def vm_image(busybox_vm_image) -> tuple[Path, Path]:
    """The session's busybox VM image (conftest.busybox_vm_image)."""
    return busybox_vm_image


def upload_split(api: httpx.Client, meta: Path, rootfs: Path) -> str:
    r = api.post("/1.0/images", files={
        "metadata": (meta.name, meta.read_bytes(), "application/octet-stream"),
        "rootfs.img": (rootfs.name, rootfs.read_bytes(), "application/octet-stream")})
    return wait_op(api, r)["metadata"]["fingerprint"]


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball, libvirtd, vm_image):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs",
                    pool_config={"size": "1GiB"}) as w:
        fp = upload_split(api, *vm_image)
        w.vm_alias = f"{w.prefix}-vm"
        try:
            assert api.post("/1.0/images/aliases", json={"name": w.vm_alias,
                                                         "target": fp}).status_code in (200, 201)
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            api.delete(f"/1.0/images/aliases/{w.vm_alias}")
            r = api.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(api, r, ok=False)


def create_vm(w, tag: str, start: bool = True, **body) -> str:
    name = w.name(tag)
    w.wait(w.api.post("/1.0/instances", json={
        "name": name, "type": "virtual-machine", "profiles": [w.profile], "start": start,
        "source": {"type": "image", "alias": w.vm_alias}, **body}))
    return name


def run(w, name: str, cmd: list[str], stdin: bytes | None = None, env=None
        ) -> tuple[int, str, str]:
    """Exec through the CLI (websockets, stdin, stdout and stderr apart)."""
    args = [str(BIN / "corral"), "exec", name]
    for k, v in (env or {}).items():
        args += ["--env", f"{k}={v}"]
    r = subprocess.run([*args, "--", *cmd], env=w.stack.env, input=stdin or b"",
                       capture_output=True, timeout=120)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def wait_agent(w, name: str, timeout: float = 90) -> None:
    last: list[str] = []

    def up() -> bool:
        r = w.api.post(f"/1.0/instances/{name}/exec", json={"command": ["true"]})
        last[:] = [r.text[:300]]
        if r.status_code != 202:
            return False
        return wait_op(w.api, r)["metadata"]["return"] == 0
    try:
        wait_for(up, timeout, interval=0.3, what=f"the agent of {name}")
    except TimeoutError as exc:  # say why: the last answer, the guest's console, the state
        console = w.api.get(f"/1.0/instances/{name}/console").content[-1500:]
        state = w.api.get(f"/1.0/instances/{name}/state").json().get("metadata")
        raise TimeoutError(f"{exc}; last exec answer: {last}; state: {state}; "
                           f"console tail: {console!r}") from None


@pytest.fixture(scope="module")
def vm(world):
    name = create_vm(world, "vm", config={"limits.cpu": "1", "limits.memory": "256MiB"})
    wait_agent(world, name)
    return name


def lxc(stack, *args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def corral(stack, *args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", stack.env)
    r = subprocess.run([str(BIN / "corral"), *args], capture_output=True, text=True,
                       timeout=180, **kw)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


# ---- tests ---------------------------------------------------------------------------


def test_server_reports_both_drivers(api, libvirtd):
    meta = api.get("/1.0").json()["metadata"]
    assert meta["environment"]["driver"] == "lxc | qemu"
    assert len(meta["environment"]["driver_version"].split(" | ")) == 2
    assert "virtual-machines" in meta["api_extensions"]


def test_vm_state_list_and_volume(world, vm, api, stack):
    inst = world.get(vm)
    assert inst["type"] == "virtual-machine" and inst["status"] == "Running"
    state = world.live(vm)
    assert state["accel"] in ("tcg", "kvm") and state["pid"] > 0
    wait_for(lambda: any(a["family"] == "inet" for a in
                         (world.live(vm)["network"] or {}).get("eth0", {}).get("addresses",
                                                                                  [])),
             60, interval=0.5, what="a DHCP lease for the VM")
    items = api.get("/1.0/instances", params={"recursion": 2}).json()["metadata"]
    mine = {i["name"]: i for i in items}
    assert mine[vm]["type"] == "virtual-machine" and mine[vm]["state"]["status"] == "Running"
    # lists carry the agent's addresses too (the stock client's IPV4 column read none)
    inet = [a["address"] for a in mine[vm]["state"]["network"]["eth0"]["addresses"]
            if a["family"] == "inet"]
    assert inet
    row = lxc(stack, "list", vm, "--format", "csv", "-c", "n4").stdout.strip()
    assert row.startswith(f"{vm},") and f"{inet[0]} (eth0)" in row, row
    vols = api.get(f"/1.0/storage-pools/{world.pool}/volumes/virtual-machine").json()
    assert f"/1.0/storage-pools/{world.pool}/volumes/virtual-machine/{vm}" in vols["metadata"]
    out = corral(stack, "list").stdout
    assert "VIRTUAL-MACHINE" in out and vm in out


def test_exec_codes_stdin_stderr_env(world, vm):
    code, out, _ = run(world, vm, ["uname", "-a"])
    assert code == 0 and out.startswith("Linux ")
    code, out, err = run(world, vm, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (code, out, err) == (7, "out\n", "err\n")
    code, out, _ = run(world, vm, ["cat"], stdin=b"hello vm\n")
    assert (code, out) == (0, "hello vm\n")
    code, out, _ = run(world, vm, ["sh", "-c", "echo $FOO"], env={"FOO": "bar"})
    assert out == "bar\n"


def test_files_push_pull_byte_exact(world, vm, stack, tmp_path):
    data = os.urandom(300_000)
    src, back = tmp_path / "blob", tmp_path / "back"
    src.write_bytes(data)
    corral(stack, "file", "push", str(src), f"{vm}/root/blob")
    corral(stack, "file", "pull", f"{vm}/root/blob", str(back))
    assert back.read_bytes() == data
    r = world.api.get(f"/1.0/instances/{vm}/files", params={"path": "/root/blob"})
    assert r.content == data and r.headers["X-LXD-type"] == "file"


def test_file_push_over_existing_file_keeps_owner_and_mode(world, vm, stack, tmp_path):
    """The stock client sends its local file's owner and mode on every push (LXD 5.0)."""
    assert run(world, vm, ["sh", "-c", "echo old > /root/kept && chown 1000:1001 /root/kept"
                                       " && chmod 640 /root/kept"])[0] == 0
    src = tmp_path / "new"
    src.write_text("new\n")
    src.chmod(0o755)
    lxc(stack, "file", "push", str(src), f"{vm}/root/kept")
    assert run(world, vm, ["stat", "-c", "%u:%g %a", "/root/kept"])[1] == "1000:1001 640\n"
    assert run(world, vm, ["cat", "/root/kept"])[1] == "new\n"
    lxc(stack, "file", "push", str(src), f"{vm}/root/fresh")
    assert run(world, vm, ["stat", "-c", "%u:%g %a", "/root/fresh"])[1] == "0:0 755\n"
    r = world.api.post(f"/1.0/instances/{vm}/files", params={"path": "/root/kept"},
                       content=b"x", headers={"X-LXD-uid": "0", "X-LXD-mode": "0600",
                                              "X-LXD-modify-perm": "mode"})
    assert r.status_code == 200, r.text
    assert run(world, vm, ["stat", "-c", "%u:%g %a", "/root/kept"])[1] == "1000:1001 600\n"


def test_console_log_and_attach(world, vm, stack):
    log = world.api.get(f"/1.0/instances/{vm}/console")
    assert log.status_code == 200 and b"Linux version" in log.content
    r = corral(stack, "console", vm, input="\necho CONSOLE-$((6*7))\n",
               env={**stack.env, "CORRAL_CONSOLE_LINGER": "3"})
    assert "CONSOLE-42" in r.stdout


def test_limits_live_cpu_and_memory(world, vm):
    def nproc() -> str:
        return run(world, vm, ["nproc"])[1].strip()

    def memtotal() -> int:
        out = run(world, vm, ["sh", "-c", "awk '/MemTotal/ {print $2}' /proc/meminfo"])[1]
        return int(out)

    before = memtotal()
    r = world.api.patch(f"/1.0/instances/{vm}", json={"config": {"limits.cpu": "2"}})
    world.wait(r)
    wait_for(lambda: nproc() == "2", 30, interval=0.5, what="the hotplugged vCPU online")
    r = world.api.patch(f"/1.0/instances/{vm}", json={"config": {"limits.memory": "192MiB"}})
    world.wait(r)
    wait_for(lambda: memtotal() < before - 32 * 1024, 30, interval=0.5,
             what="the balloon to shrink MemTotal")
    r = world.api.patch(f"/1.0/instances/{vm}", json={"config": {"limits.memory": "2GiB"}})
    assert r.status_code == 400 and "start" in r.json()["error"]
    # a limit the QEMU driver cannot change live is refused, not deferred unnoticed
    r = world.api.patch(f"/1.0/instances/{vm}", json={"config": {"limits.processes": "50"}})
    assert r.status_code == 400 and "limits.processes cannot change while" in r.text
    assert "limits.processes" not in world.get(vm)["config"]
    r = world.api.post(f"/1.0/instances/{vm}", json={"name": f"{vm}-new"})
    assert r.status_code == 400 and "Renaming a virtual-machine" in r.text


def test_vm_and_container_ping_by_name(world, vm):
    ct = world.create("ct", start=True)
    wait_for(lambda: run(world, vm, ["ping", "-c", "1", "-W", "2", ct])[0] == 0, 60,
             interval=1, what="the VM to ping the container by name")
    wait_for(lambda: wait_op(world.api, world.api.post(
        f"/1.0/instances/{ct}/exec", json={"command": ["ping", "-c", "1", "-W", "2", vm]})
    )["metadata"]["return"] == 0, 60, interval=1, what="the container to ping the VM")


def test_wrong_image_type_refused_nothing_left(world, api, stack):
    before = set(api.get("/1.0/instances").json()["metadata"])
    for kind, alias in (("virtual-machine", world.image), ("container", world.vm_alias)):
        name = f"{world.prefix}-bad"
        r = api.post("/1.0/instances", json={"name": name, "type": kind,
                                              "profiles": [world.profile],
                                              "source": {"type": "image", "alias": alias}})
        assert r.status_code == 400, r.text
        assert "image" in r.json()["error"]
        assert api.get(f"/1.0/instances/{name}").status_code == 404
        assert not (stack.dir / "virtual-machines" / name).exists()
    assert set(api.get("/1.0/instances").json()["metadata"]) == before


def test_container_only_keys_refused_for_a_vm(world, vm, api, stack):
    """A privileged VM means nothing (the guest has its own kernel): refused, not stored."""
    name = f"{world.prefix}-priv"
    for key, value in (("security.privileged", "true"), ("security.nesting", "true"),
                       ("raw.lxc", "lxc.apparmor.profile = unconfined")):
        r = api.post("/1.0/instances", json={
            "name": name, "type": "virtual-machine", "profiles": [world.profile],
            "config": {key: value}, "source": {"type": "image", "alias": world.vm_alias}})
        assert r.status_code == 400 and key in r.json()["error"], r.text
        assert api.get(f"/1.0/instances/{name}").status_code == 404
        assert not (stack.dir / "virtual-machines" / name).exists()
    r = api.patch(f"/1.0/instances/{vm}", json={"config": {"security.privileged": "true"}})
    assert r.status_code == 400 and "containers only" in r.json()["error"], r.text
    assert "security.privileged" not in api.get(f"/1.0/instances/{vm}").json()[
        "metadata"]["config"]


def test_delete_refused_while_running(world, vm, api):
    r = api.delete(f"/1.0/instances/{vm}")
    assert r.status_code == 400 and "running" in r.json()["error"]


def test_service_restart_keeps_vm_managed(world, vm, stack):
    stack.stop("instance")
    stack.start("instance")
    wait_for(lambda: world.api.get(f"/1.0/instances/{vm}").status_code == 200, 30,
             what="the instance service back")
    assert world.get(vm)["status"] == "Running"
    wait_agent(world, vm, 30)
    world.state(vm, "freeze")
    assert world.get(vm)["status"] == "Frozen"
    world.state(vm, "unfreeze")
    assert world.get(vm)["status"] == "Running"


def test_exec_before_agent_is_clear_error_then_stock_client(world, stack, api):
    name = world.name("lxc")
    lxc(stack, "launch", world.vm_alias, name, "--vm", "-p", world.profile)
    t0 = time.monotonic()
    r = api.post(f"/1.0/instances/{name}/exec", json={"command": ["true"],
                                                       "wait-for-websocket": True})
    if r.status_code != 202:  # the agent may even be up already under a fast host
        assert r.status_code == 503 and "VM agent isn't currently running" in r.text
        assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    rows = json.loads(lxc(stack, "list", "--format", "json").stdout)
    assert any(x["name"] == name and x["type"] == "virtual-machine" for x in rows)
    assert time.monotonic() - t0 < 10  # a VM whose agent is not up yet does not stall it
    wait_agent(world, name)
    assert lxc(stack, "exec", name, "--", "uname", "-a").stdout.startswith("Linux ")
    lxc(stack, "stop", name, "--force")
    assert world.get(name)["status"] == "Stopped"
    # the agent's check runs beside the status check: the status still answers first
    r = api.post(f"/1.0/instances/{name}/exec", json={"command": ["true"]})
    assert r.status_code == 400 and "Instance is not running" in r.text, r.text
    lxc(stack, "delete", "--force", name)
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    assert not (stack.dir / "virtual-machines" / name).exists()


def test_cli_launch_stop_delete(world, stack, api):
    name = world.name("cli")
    corral(stack, "launch", world.vm_alias, name, "--vm", "-p", world.profile)
    assert world.get(name)["type"] == "virtual-machine"
    wait_agent(world, name)
    out = corral(stack, "exec", name, "--", "uname", "-a").stdout
    assert out.startswith("Linux ")
    corral(stack, "stop", name, "--timeout", "20")
    assert world.get(name)["status"] == "Stopped"
    corral(stack, "delete", name)
    assert api.get(f"/1.0/instances/{name}").status_code == 404
    vols = api.get(f"/1.0/storage-pools/{world.pool}/volumes/virtual-machine").json()
    assert not any(v.endswith(f"/{name}") for v in vols["metadata"])


def test_dir_pool_vm_volume_is_an_overlay(world, api, stack):
    pool = f"{world.prefix}d"
    name = f"{world.prefix}-dirvm"
    assert api.post("/1.0/storage-pools", json={"name": pool, "driver": "dir"}
                    ).status_code == 200
    try:
        world.instances.append(name)
        world.wait(api.post("/1.0/instances", json={
            "name": name, "type": "virtual-machine", "profiles": [world.profile],
            "devices": {"root": {"type": "disk", "path": "/", "pool": pool, "size": "1GiB"}},
            "source": {"type": "image", "alias": world.vm_alias}}))
        vol = stack.dir / "storage-pools" / pool / "virtual-machines" / name
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(vol / "root.qcow2")],
            capture_output=True, text=True, check=True).stdout)
        assert info["backing-filename"].endswith("/rootfs.img")
        assert f"/storage-pools/{pool}/images/" in info["backing-filename"]
        assert info["virtual-size"] == 1 << 30  # the root disk's size grew it
        assert not (vol / "rootfs.img").exists() and (vol / "boot" / "vmlinuz").is_file()
        world.remove(name)
        assert not vol.exists()
    finally:
        world.remove(name)
        r = api.delete(f"/1.0/storage-pools/{pool}")
        if r.status_code == 202:
            wait_op(api, r, ok=False)


def test_stock_client_console(world, vm, stack):
    """`lxc console` (it wants a terminal: give it a pty) bridges the serial console."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(["lxc", "console", vm], env={**stack.env, "LXD_DIR": str(stack.dir)},
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        time.sleep(1.5)
        os.write(master, b"\recho STOCK-$((6*7))\r")
        deadline = time.monotonic() + 20
        while b"STOCK-42" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        for key in (b"\x01", b"q"):  # ctrl-a q detaches (lxc reads a byte at a time)
            os.write(master, key)
            time.sleep(0.3)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"STOCK-42" in out, out


def test_container_console_attach(world, stack):
    ct = next((n for n in world.instances if n.endswith("-ct")), None) \
        or world.create("ct", start=True)
    r = corral(stack, "console", ct, input="\necho CT-$((6*7))\n",
               env={**stack.env, "CORRAL_CONSOLE_LINGER": "2"}, check=False)
    assert "CT-42" in r.stdout, (r.stdout, r.stderr)
