"""The QEMU driver against real libvirtd + QEMU (TCG here), booting a tiny guest of our own.

The guest is Debian's cloud kernel (``apt-get download``, cached under
/var/cache/corral-test) plus a busybox initramfs whose ``/init`` loads the virtio
modules, prints markers to ttyS0, runs a shell on ttyS0, powers off on the ACPI power
button (unless booted with ``corral.noacpi``) and onlines hotplugged CPUs. Every domain
is ``crt`` + hex, lives in a tmp vmpath, and is destroyed and undefined at the end even
when a test fails. NICs only join a bridge the test creates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

from services.instance.drivers.base import SPEC_FILE, InstanceSpec, Nic  # noqa: E402
from services.instance.drivers.qemu import QemuDriver  # noqa: E402
from shared.errors import BadRequest, Conflict, NotFound, Unavailable  # noqa: E402

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/corral-test/kernel")
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net",
           "virtio_console", "virtio_balloon", "evdev", "button"]
if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64") or not shutil.which("busybox"):
    pytest.skip("needs root, qemu-system-x86 and busybox-static", allow_module_level=True)

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m.ko 2>/dev/null; done
echo CORRAL-TEST-BOOTED > /dev/ttyS0
if ! grep -q corral.noacpi /proc/cmdline; then
  for e in /dev/input/event*; do
    (dd if=$e bs=24 count=1 >/dev/null 2>&1; echo POWER-BUTTON > /dev/ttyS0; poweroff -f) &
  done
fi
setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1' &
last=""
while true; do
  for c in /sys/devices/system/cpu/cpu*/online; do
    [ "$(cat $c 2>/dev/null)" = 0 ] && echo 1 > $c
  done
  now="NPROC=$(nproc) MEMTOTAL=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
  [ "$now" != "$last" ] && echo "$now" > /dev/ttyS0 && last="$now"
  sleep 0.5
done
"""


def _uid() -> str:
    return "crt" + secrets.token_hex(3)[:5]


def _kernel() -> tuple[Path, Path]:
    """(vmlinuz, modules dir) of Debian's cloud kernel, downloaded once."""
    found = sorted(CACHE.glob("x/boot/vmlinuz-*"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        dep = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                             capture_output=True, text=True, check=True).stdout
        pkg = re.search(r"Depends: (linux-image-\S+)", dep).group(1)
        subprocess.run(["apt-get", "download", pkg], cwd=CACHE, check=True,
                       capture_output=True)
        deb = next(CACHE.glob("linux-image-*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(CACHE / "x")], check=True)
        found = sorted(CACHE.glob("x/boot/vmlinuz-*"))
    vmlinuz = found[-1]
    version = vmlinuz.name.removeprefix("vmlinuz-")
    return vmlinuz, CACHE / "x/lib/modules" / version / "kernel"


def make_volume(vol: Path, cmdline_extra: str = "") -> Path:
    """A root volume as the storage service lays it out, plus our kernel and initramfs."""
    vmlinuz, kmods = _kernel()
    root = vol.parent / (vol.name + ".initramfs")
    (root / "lib/modules").mkdir(parents=True)
    for d in ("bin", "proc", "sys", "dev"):
        (root / d).mkdir()
    shutil.copy2(shutil.which("busybox"), root / "bin/busybox")
    for m in MODULES:
        shutil.copy2(next(kmods.rglob(f"{m}.ko")), root / "lib/modules")
    (root / "init").write_text(INIT.replace("MODULES", " ".join(MODULES)))
    (root / "init").chmod(0o755)
    vol.mkdir(parents=True)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    cpio = subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], cwd=root, input=files,
                          capture_output=True, check=True).stdout
    (vol / "initrd.img").write_bytes(subprocess.run(["gzip", "-1"], input=cpio,
                                                    capture_output=True, check=True).stdout)
    shutil.rmtree(root)
    shutil.copy2(vmlinuz, vol / "vmlinuz")
    (vol / "cmdline").write_text(f"console=ttyS0 panic=-1 quiet {cmdline_extra}")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vol / "rootfs.img"),
                    "16M"], check=True)
    return vol


@pytest.fixture(scope="module")
def libvirtd():
    """Start libvirtd through deploy/libvirt.sh when none runs; stop only what it started."""
    if shutil.which("libvirtd") is None:
        pytest.skip("libvirt is not installed (deploy/libvirt.sh up)")
    run_dir = tempfile.mkdtemp(prefix="crt")
    env = {**os.environ, "CORRAL_DIR": run_dir, "CORRAL_APT_UPDATED": "1"}
    subprocess.run([str(REPO / "deploy/libvirt.sh"), "up"], env=env, check=True,
                   capture_output=True)
    yield
    subprocess.run([str(REPO / "deploy/libvirt.sh"), "down"], env=env, check=False,
                   capture_output=True)
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def env(libvirtd):
    base = Path(tempfile.mkdtemp(prefix="crt"))
    drv = QemuDriver(base / "vms")
    made: list[str] = []

    def new(config=None, devices=None, nics=(), start=True, extra=""):
        name = _uid()
        vol = make_volume(base / "volumes" / name, extra)
        made.append(name)
        drv.create(InstanceSpec(name, dict(config or {}), dict(devices or {}), vol, list(nics)))
        if start:
            drv.start(name)
        return name, vol

    yield drv, new, base
    for name in made:
        try:
            dom = drv.conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    shutil.rmtree(base, ignore_errors=True)


def wait_log(drv, name, pattern: str, timeout: float = 60) -> re.Match:
    """Wait for a regex in the serial log (TCG boots in a few seconds; be generous)."""
    deadline = time.monotonic() + timeout
    while True:
        text = drv.console_log(name).decode(errors="replace")
        found = list(re.finditer(pattern, text))
        m = found[-1] if found else None
        if m:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in console log of {name}:\n{text[-2000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def vm(env):
    drv, new, _ = env
    name, vol = new({"limits.cpu": "1", "limits.memory": "256MiB"},
                    {"root": {"type": "disk", "path": "/", "size": "64MiB"}})
    wait_log(drv, name, "CORRAL-TEST-BOOTED")
    return drv, name, vol


def test_boot_state_and_console_log(vm):
    drv, name, vol = vm
    assert drv.accel() in ("kvm", "tcg")
    st = drv.state(name)
    assert (st["status"], st["status_code"]) == ("Running", 103)
    assert st["pid"] > 0 and Path(f"/proc/{st['pid']}").exists()
    assert st["cpu"]["usage"] > 0 and st["memory"]["total"] == 256 * 2**20
    assert st["accel"] == drv.accel()
    assert drv.list_host()[name] == "Running"
    assert drv.state_many([name, "crtnone0"])[name]["status"] == "Running"
    info = subprocess.run(["qemu-img", "info", "-U", str(vol / "root.qcow2")],
                          capture_output=True, text=True, check=True).stdout
    assert "backing file: rootfs.img" in info and "64 MiB" in info
    assert (drv.vmpath / name / "agent.sock").exists()


def test_console_open_interactive(vm):
    drv, name, _ = vm
    fd = drv.console_open(name)
    try:
        os.write(fd, b"\necho CONSOLE-$((6*7))\n")
        data, deadline = b"", time.monotonic() + 30
        while b"CONSOLE-42" not in data and time.monotonic() < deadline:
            import select
            if select.select([fd], [], [], 1)[0]:
                data += os.read(fd, 4096)
    finally:
        os.close(fd)
    assert b"CONSOLE-42" in data


def test_vcpu_hotplug_and_balloon(vm):
    drv, name, _ = vm
    wait_log(drv, name, r"NPROC=1 MEMTOTAL=")
    drv.apply_limits_live(name, {"limits.cpu": "2"})
    wait_log(drv, name, r"NPROC=2 ")
    before = int(wait_log(drv, name, r"MEMTOTAL=(\d+)").group(1))
    drv.apply_limits_live(name, {"limits.memory": "192MiB"})
    deadline = time.monotonic() + 30
    while True:  # the last MEMTOTAL line the guest printed
        after = int(wait_log(drv, name, r"MEMTOTAL=(\d+)").group(1))
        if after <= before - 50 * 1024 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert after <= before - 50 * 1024  # the balloon took ~64 MiB
    assert drv.state(name)["memory"]["total"] == 192 * 2**20
    with pytest.raises(BadRequest, match="started with"):
        drv.apply_limits_live(name, {"limits.memory": "512MiB"})
    with pytest.raises(BadRequest, match="unplug"):
        drv.apply_limits_live(name, {"limits.cpu": "1"})
    assert drv.host_status(name) == "Running"
    spec = json.loads((drv.vmpath / name / SPEC_FILE).read_text())  # kept for next start
    assert spec["config"]["limits.memory"] == "192MiB"


def test_freeze_unfreeze(vm):
    drv, name, _ = vm
    drv.freeze(name)
    assert drv.state(name)["status"] == "Frozen"
    with pytest.raises(Conflict):
        drv.freeze(name)
    drv.unfreeze(name)
    assert drv.state(name)["status"] == "Running"
    with pytest.raises(Conflict):
        drv.unfreeze(name)


def test_agent_unavailable_fast(vm):
    drv, name, _ = vm
    t = time.monotonic()
    with pytest.raises(Unavailable, match="agent isn't currently running"):
        drv.exec_start(name, ["uname", "-a"])
    with pytest.raises(Unavailable):
        drv.file_get(name, "/etc/hostname")
    assert time.monotonic() - t < 5


def test_acpi_stop_delete(env, vm):
    drv, name, vol = vm
    with pytest.raises(Conflict, match="running"):
        drv.delete(name)
    drv.stop(name, timeout=60)
    assert "POWER-BUTTON" in drv.console_log(name).decode(errors="replace")
    assert drv.state(name)["status"] == "Stopped"
    with pytest.raises(Conflict):
        drv.stop(name)
    drv.delete(name)
    with pytest.raises(NotFound):
        drv.state(name)
    assert name not in drv.list_host() and not (drv.vmpath / name).exists()
    assert (vol / "rootfs.img").exists()  # the root volume is the storage service's


def test_stop_falls_back_to_destroy_and_restart(env):
    drv, new, _ = env
    name, _ = new({"limits.memory": "128MiB"}, extra="corral.noacpi")
    wait_log(drv, name, "CORRAL-TEST-BOOTED")
    drv.stop(name, timeout=1)  # the guest ignores the power button
    assert drv.state(name)["status"] == "Stopped"
    drv.start(name)
    with pytest.raises(Conflict):
        drv.start(name)
    drv.restart(name, force=True)
    assert drv.state(name)["status"] == "Running"
    drv.stop(name, force=True)


def test_nic_on_own_bridge(env):
    from pyroute2 import IPRoute
    drv, new, _ = env
    br, tap = _uid() + "b", _uid() + "t"
    with IPRoute() as ipr:
        ipr.link("add", ifname=br, kind="bridge")
        try:
            mac = "52:54:00:%02x:%02x:%02x" % tuple(secrets.token_bytes(3))
            name, _ = new({"limits.memory": "128MiB"},
                          nics=[Nic(name="eth0", bridge=br, parent=br, hwaddr=mac,
                                     host_name=tap)])
            try:
                idx = ipr.link_lookup(ifname=tap)
                assert idx and ipr.get_links(idx[0])[0].get_attr("IFLA_MASTER") == \
                    ipr.link_lookup(ifname=br)[0]
                net = drv.state(name)["network"]
                assert net["eth0"]["host_name"] == tap and net["eth0"]["hwaddr"] == mac
                assert "bytes_received" in net["eth0"]["counters"]
            finally:
                drv.stop(name, force=True)
            assert not ipr.link_lookup(ifname=tap)
        finally:
            ipr.link("del", ifname=br)


def test_bad_input(env):
    drv, new, base = env
    with pytest.raises(BadRequest, match="rootfs.img"):
        drv.create(InstanceSpec(_uid(), {}, {}, base))
    name, vol = new(start=False)
    with pytest.raises(Conflict):
        drv.create(InstanceSpec(name, {}, {}, vol))
    bad = [_uid(), _uid(), _uid()]
    with pytest.raises(BadRequest):
        drv.create(InstanceSpec(bad[0], {"limits.memory": "lots"}, {}, vol))
    with pytest.raises(BadRequest, match="NIC"):
        drv.create(InstanceSpec(bad[1], {}, {}, vol, [Nic(nictype="macvlan", parent="lo")]))
    with pytest.raises(BadRequest, match="rootfs.img"):
        drv.create(InstanceSpec(bad[2], {}, {}, base / "nowhere"))
    with pytest.raises(BadRequest, match="only grow"):
        drv.update(name, {}, {"root": {"type": "disk", "path": "/", "size": "1MiB"}})
    with pytest.raises(NotFound):
        drv.start("crtnope0")
    with pytest.raises(BadRequest):
        drv.state("bad/name")
    for b in bad:  # failed creates leave nothing behind
        assert not (drv.vmpath / b).exists() and b not in drv.list_host()


# ---- the real Corral VM image (shared/image/build_vm.py) with its in-guest agent ------

# Keyed by the builder's source: a change to the image (initramfs, cmdline...) rebuilds it.
IMAGE_CACHE = Path("/var/cache/corral-test/vm-image") / hashlib.sha256(
    (Path(__file__).resolve().parents[1] / "shared/image/build_vm.py").read_bytes()
).hexdigest()[:12]


@pytest.fixture(scope="module")
def real_vm(env):
    """A VM from build_vm.py's image (built once, cached), booted, agent up."""
    import tarfile
    build_vm = pytest.importorskip("shared.image.build_vm")
    metas = sorted(IMAGE_CACHE.glob("*.tar.gz"))
    if not metas:
        build_vm.build_busybox_vm(IMAGE_CACHE, cache_dir=IMAGE_CACHE / ".cache", size_mib=64)
        metas = sorted(IMAGE_CACHE.glob("*.tar.gz"))
    meta = metas[-1]
    drv, _, base = env
    name = _uid()
    vol = base / "volumes" / name
    vol.mkdir(parents=True)
    with tarfile.open(meta) as tf:
        tf.extractall(vol, filter="data")  # metadata.yaml + boot/ as format.unpack lays out
    shutil.copy2(meta.with_name(meta.name.removesuffix(".tar.gz") + ".rootfs.img"),
                 vol / "rootfs.img")
    drv.create(InstanceSpec(name, {"limits.cpu": "1", "limits.memory": "256MiB"}, {}, vol))
    try:
        drv.start(name)
        deadline = time.monotonic() + 90
        while True:
            try:
                drv.exec_start(name, ["true"]).wait()
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise AssertionError("agent never came up:\n" +
                                         drv.console_log(name).decode(errors="replace")[-2000:]
                                         ) from None
                time.sleep(0.5)
        yield drv, name
    finally:
        dom = drv.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        drv.delete(name)


def run(drv, name, cmd, stdin=b""):
    """Run a command through the agent; (exit code, stdout, stderr)."""
    p = drv.exec_start(name, cmd)
    os.write(p.stdin_fd, stdin)
    os.close(p.stdin_fd)
    out = b"".join(iter(lambda: os.read(p.stdout_fd, 65536), b""))
    err = b"".join(iter(lambda: os.read(p.stderr_fd, 65536), b""))
    code = p.wait()
    os.close(p.stdout_fd)
    os.close(p.stderr_fd)
    return code, out, err


def test_real_image_exec_files_state(real_vm):
    drv, name = real_vm
    code, out, _ = run(drv, name, ["uname", "-a"])
    assert code == 0 and out.startswith(b"Linux ")
    assert run(drv, name, ["sh", "-c", "cat; exit 3"], b"hi\n")[:2] == (3, b"hi\n")
    drv.file_put(name, "/root/crt.txt", b"hello vm\n", mode=0o600)
    content, uid, gid, mode, kind = drv.file_get(name, "/root/crt.txt")
    assert (content, uid, gid, mode, kind) == (b"hello vm\n", 0, 0, 0o600, "file")
    drv.file_delete(name, "/root/crt.txt")
    st = drv.state(name)
    assert st["processes"] > 0 and st["memory"]["total"] > 0 and "lo" in st["network"]


def test_real_image_hotplug_and_balloon_seen_by_guest(real_vm):
    drv, name = real_vm
    drv.apply_limits_live(name, {"limits.cpu": "2"})
    deadline = time.monotonic() + 30
    while run(drv, name, ["nproc"])[1].strip() != b"2" and time.monotonic() < deadline:
        run(drv, name, ["sh", "-c", "for c in /sys/devices/system/cpu/cpu*/online; do "
                        "echo 1 > $c; done 2>/dev/null"])
        time.sleep(0.5)
    assert run(drv, name, ["nproc"])[1].strip() == b"2"

    def mem() -> int:
        return int(run(drv, name, ["awk", "/MemTotal/ {print $2}", "/proc/meminfo"])[1])

    before = mem()
    drv.apply_limits_live(name, {"limits.memory": "192MiB"})
    deadline = time.monotonic() + 30
    while mem() > before - 50 * 1024 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert mem() <= before - 50 * 1024


def _until(pred, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return got


def test_real_image_agent_restart_never_hangs_exec(real_vm):
    """The agent port's state comes from QEMU's VSERPORT_CHANGE events, not a live-XML
    read per exec; a restarted agent (inittab respawns it) must not hang the next exec
    on the connection the driver held to the old one."""
    drv, name = real_vm
    assert run(drv, name, ["true"])[0] == 0
    watch = drv._watch()
    assert watch is not None and watch.port_open(name) is True
    assert drv.host_status(name) == "Running" and watch.state(name) == libvirt.VIR_DOMAIN_RUNNING
    gen = watch.generation(name)
    for _ in range(3):
        # the agent kills itself a moment after answering; init respawns it
        code, _, _ = run(drv, name, ["sh", "-c", "(sleep 0.3; kill $(pidof corral-agent))"
                                     " </dev/null >/dev/null 2>&1 & exit 0"])
        assert code == 0
        _until(lambda g=gen: watch.port_open(name) is False or watch.generation(name) > g + 1,
               10, "the port's close event")
        gen = watch.generation(name)
        t0 = time.monotonic()
        while True:
            try:
                code, out, _ = run(drv, name, ["echo", "again"])
                break
            except Unavailable:  # agent still restarting: a fast 503, never a hang
                assert time.monotonic() - t0 < 30
                time.sleep(0.1)
        assert (code, out) == (0, b"again\n")
        assert time.monotonic() - t0 < 10  # the old connection's 30 s reply timeout not hit
        assert watch.port_open(name) is True


def test_real_image_status_follows_events(real_vm):
    """A state change libvirt makes without the driver (the guest frozen and resumed
    behind its back) reaches host_status through the lifecycle events."""
    drv, name = real_vm
    assert drv.host_status(name) == "Running"
    dom = drv.conn.lookupByName(name)
    dom.suspend()
    try:
        _until(lambda: drv.host_status(name) == "Frozen", 5, "Frozen from the event")
    finally:
        dom.resume()
    _until(lambda: drv.host_status(name) == "Running", 5, "Running from the event")
    assert run(drv, name, ["true"])[0] == 0
