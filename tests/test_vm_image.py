"""The busybox VM image: build, inspect, extract boot files, and boot it under QEMU (TCG)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.instance.drivers.qemu_agent_client import AgentClient
from shared.errors import Internal, NotFound, Unavailable
from shared.image import build_vm
from shared.image.format import inspect_split, unpack

QEMU = shutil.which("qemu-system-x86_64")


def uid() -> str:
    return "crt" + os.urandom(3).hex()[:5]


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One kernel download per test session."""
    return tmp_path_factory.mktemp("vm-kernel-cache")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, kernel_cache: Path) -> tuple[Path, Path]:
    return build_vm.build_busybox_vm(tmp_path_factory.mktemp("vmimg"), cache_dir=kernel_cache)


def test_build_inspect_unpack(image: tuple[Path, Path], tmp_path: Path,
                              kernel_cache: Path) -> None:
    meta, disk = image
    info = inspect_split(meta, disk)
    assert info.type == "virtual-machine" and info.rootfs_format == "qcow2"
    assert info.architecture == "x86_64"
    assert info.properties["os"] == "busybox" and info.properties["variant"] == "default"
    assert {"release", "description"} <= info.properties.keys()
    assert info.fingerprint == hashlib.sha256(meta.read_bytes() + disk.read_bytes()).hexdigest()
    vol = unpack(meta, tmp_path / "vol", disk)
    kernel, initrd, cmdline = build_vm.boot_files(vol)
    assert kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert initrd.read_bytes()[:6] == b"070701"  # newc cpio, not compressed
    assert "root=/dev/vda" in cmdline and "console=ttyS0" in cmdline
    assert (vol / "rootfs.img").is_file()
    with pytest.raises(NotFound):
        build_vm.boot_files(tmp_path)
    # The CLI builds the same bytes again (fixed mtimes, UUIDs, inode times).
    env = dict(os.environ, CORRAL_DIR=str(tmp_path / "corral"))
    (tmp_path / "corral/cache").mkdir(parents=True)
    (tmp_path / "corral/cache/vm-kernel").symlink_to(kernel_cache)
    out = subprocess.run([sys.executable, "-m", "shared.image.build_vm", str(tmp_path / "o")],
                         capture_output=True, text=True, check=True, env=env).stdout.split()
    assert [Path(p).name for p in out] == [meta.name, disk.name]
    assert inspect_split(*out).fingerprint == info.fingerprint


def test_extract_boot_from_disk(image: tuple[Path, Path], tmp_path: Path) -> None:
    meta, disk = image
    vol = unpack(meta, tmp_path / "vol", disk)
    kernel, initrd = build_vm.extract_boot(disk, tmp_path / "boot")
    assert kernel.read_bytes() == (vol / "boot/vmlinuz").read_bytes()
    assert initrd.read_bytes() == (vol / "boot/initrd.img").read_bytes()


def test_module_order(kernel_cache: Path) -> None:
    _, mods = build_vm.fetch_kernel(kernel_cache)
    order = [n for n, _ in build_vm.module_order(mods, ["virtio_net", "virtio_pci"])]
    for dep, mod in [("virtio", "virtio_pci"), ("virtio_pci_modern_dev", "virtio_pci"),
                     ("virtio_pci_legacy_dev", "virtio_pci"), ("failover", "net_failover"),
                     ("net_failover", "virtio_net")]:
        assert order.index(dep) < order.index(mod)
    with pytest.raises(NotFound):
        build_vm.module_order(mods, ["crt_no_such_module"])


def _cpio_files(initrd: bytes) -> dict[str, bytes]:
    """name -> data of a newc cpio (the initramfs as the kernel reads it)."""
    raw, files, off = initrd, {}, 0
    while True:
        hdr = raw[off:off + 110]
        assert hdr[:6] == b"070701", f"bad cpio header at {off}"
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = raw[off + 110:off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return files
        files[name] = raw[off:off + size]
        off = (off + size + 3) & ~3


def test_initramfs_fast_boot(image: tuple[Path, Path], tmp_path: Path) -> None:
    """What keeps TCG boots short: unsigned modules (no RSA check per insmod), nothing
    to inflate, a quiet kernel console and no crypto self-tests (see build_vm.CMDLINE)."""
    meta, disk = image
    vol = unpack(meta, tmp_path / "vol", disk)
    _, initrd, cmdline = build_vm.boot_files(vol)
    files = _cpio_files(initrd.read_bytes())
    mods = {n: d for n, d in files.items() if n.endswith(".ko")}
    assert {"modules/virtio_pci.ko", "modules/virtio_blk.ko", "modules/virtio_net.ko",
            "modules/virtio_console.ko", "modules/evdev.ko"} <= mods.keys()
    for name, data in mods.items():
        assert data[:4] == b"\x7fELF" and not data.endswith(build_vm.SIG_MAGIC), name
    assert {"quiet", "cryptomgr.notests"} <= set(cmdline.split())
    assert b"cat /proc/version" in files["init"]  # the console log still names the kernel


def test_strip_signature() -> None:
    body = b"\x7fELF" + b"x" * 100
    sig = b"S" * 40
    trailer = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + len(sig).to_bytes(4, "big")
    assert build_vm.strip_signature(body + sig + trailer + build_vm.SIG_MAGIC) == body
    assert build_vm.strip_signature(body) == body  # unsigned: untouched
    bad = body + (10 ** 6).to_bytes(4, "big") + build_vm.SIG_MAGIC
    with pytest.raises(Internal):
        build_vm.strip_signature(bad)


@pytest.fixture
def vm(image: tuple[Path, Path], tmp_path: Path) -> Iterator[dict]:
    """A running QEMU (TCG, no network) booted from the image; killed by PID at the end."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    meta, disk = image
    name = uid()
    vol = unpack(meta, tmp_path / "vol", disk)  # as the driver gets it: boot/ + rootfs.img
    kernel, initrd, cmdline = build_vm.boot_files(vol)
    overlay = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(vol / "rootfs.img"),
                    str(overlay)], check=True)
    sock, mon, log = tmp_path / f"{name}.agent", tmp_path / f"{name}.mon", tmp_path / "console"
    cmd = [QEMU, "-name", name, "-machine", "accel=tcg", "-m", "256", "-nographic",
           "-nodefaults", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"{cmdline} corral.hostname={name}",
           "-drive", f"file={overlay},if=virtio,format=qcow2",
           "-device", "virtio-serial",
           "-chardev", f"socket,path={sock},server=on,wait=off,id=agent",
           "-device", f"virtserialport,chardev=agent,name={build_vm.AGENT_PORT}",
           "-nic", "none", "-serial", f"file:{log}",
           "-monitor", f"unix:{mon},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield {"name": name, "proc": proc, "sock": sock, "mon": mon, "log": log}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _connect(sock: Path, proc: subprocess.Popen, log: Path) -> AgentClient:
    """Poll until the guest's agent answers (TCG boot takes several seconds)."""
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"qemu exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            client = await AgentClient.connect(sock, timeout=1)
            await client.ping(timeout=2)
            return client
        except Unavailable:
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                pytest.fail(f"the VM agent never answered; console:\n{tail}")
            await asyncio.sleep(0.5)


async def test_boot_vm_and_talk_to_agent(vm: dict) -> None:
    client = await _connect(vm["sock"], vm["proc"], vm["log"])
    try:
        proc = await client.exec(["uname", "-a"], env={"PATH": "/bin:/sbin:/usr/bin"})
        out = await proc.stdout.read()
        assert await proc.wait() == 0
        assert out.startswith(f"Linux {vm['name']} ".encode()) and b"cloud-amd64" in out
        st = await client.state()
        assert st["hostname"] == vm["name"] and st["memory"]["total"] > 100 << 20
        assert list(st["network"]) == ["lo"]  # -nic none: no way off the machine
        data = os.urandom(1 << 20)
        await client.file_put("/root/blob", data, mode=0o600)
        got = await client.file_get("/root/blob")
        assert got.content == data and got.mode == 0o600
        proc = await client.exec(["sh", "-c", "grep -c ' /dev \\| /proc \\| /sys ' "
                                  "/proc/mounts; ls /dev/pts >/dev/null && echo pts"])
        assert await proc.stdout.read() == b"3\npts\n"
    finally:
        await client.close()
    # Reconnecting works (the port stays, the agent resyncs on the new host's hello).
    again = await _connect(vm["sock"], vm["proc"], vm["log"])
    await again.close()
    # ACPI power button -> acpid -> poweroff: QEMU ends on its own.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(vm["mon"]))
        s.sendall(b"system_powerdown\n")
        assert await asyncio.to_thread(vm["proc"].wait, 60) == 0
    console = vm["log"].read_text(errors="replace")
    assert "Linux version" in console
    # one vCPU: corral-cpu-online must not complain each second about the literal glob
    assert "can't open /sys/devices/system/cpu" not in console
