"""What the host offers the VM driver: the libvirt connection and the accelerator.

Why a probe instead of trusting ``/dev/kvm``: on nested hosts the device opens and QEMU
starts with ``-accel kvm``, yet the vCPU stalls (here SeaBIOS stops after printing its
e820 map; with ``-cpu host`` QEMU dies on "failed to set MSR 0x10a"). So we boot SeaBIOS
once with no disk and watch its debug port: a working accelerator reaches "No bootable
device" within a second or two. The answer is cached for the life of the process;
``CORRAL_VM_ACCEL=kvm|tcg`` skips the probe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import libvirt

from shared.errors import Internal, Unavailable

from . import qemu_events

URI = os.environ.get("CORRAL_LIBVIRT_URI", "qemu:///system")
EMULATOR = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
_PROBE_DONE = (b"No bootable device", b"Boot failed", b"enter handle_18")
_lock = threading.Lock()
_accel: str | None = None
_conns: dict[str, libvirt.virConnect] = {}


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them as values instead."""


libvirt.registerErrorHandler(_quiet, None)


def connect(uri: str = URI) -> libvirt.virConnect:
    """One shared connection per URI (libvirt connections are thread-safe)."""
    with _lock:
        conn = _conns.get(uri)
        if conn is not None and conn.isAlive():
            return conn
        qemu_events.start_event_loop()  # before the open: events bind to it
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise Unavailable(f"Cannot reach libvirtd at {uri}: {e.get_error_message()}; "
                              "is it running? (deploy/libvirt.sh up)") from None
        _conns[uri] = conn
        return conn


def accel(timeout: float = 4.0) -> str:
    """"kvm" when KVM really runs guests here, else "tcg" (probed once, then cached)."""
    global _accel
    with _lock:
        if _accel is None:
            forced = os.environ.get("CORRAL_VM_ACCEL", "")
            _accel = forced if forced in ("kvm", "tcg") else _probe_kvm(timeout)
        return _accel


def _probe_kvm(timeout: float) -> str:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return "tcg"
    # Under CORRAL_DIR when there is one: a service killed during the probe (tests stop
    # services at any moment) would otherwise leave the directory in the system's /tmp.
    corral_dir = os.environ.get("CORRAL_DIR")
    parent = Path(corral_dir) / "tmp" if corral_dir and os.path.isdir(corral_dir) else None
    if parent is not None:
        parent.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corral-kvm-probe", dir=parent) as tmp:
        log = Path(tmp) / "debugcon"
        log.touch()
        # `-cpu host`, as KVM domains run: on hosts with broken nested KVM (this one) QEMU
        # then fails at once ("failed to set MSR 0x10a"); with the default CPU model the
        # BIOS sometimes runs under KVM while a real guest then stalls, so the probe lied.
        cmd = [EMULATOR, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
               "-display", "none", "-m", "16", "-monitor", "none", "-no-reboot",
               "-debugcon", f"file:{log}", "-global", "isa-debugcon.iobase=0x402"]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        except OSError:
            return "tcg"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if any(m in log.read_bytes() for m in _PROBE_DONE):
                    return "kvm"
                time.sleep(0.05)
            return "tcg"
        finally:
            proc.kill()
            proc.wait()


def domain_type() -> str:
    """The libvirt ``<domain type>`` for the accelerator in use."""
    return "kvm" if accel() == "kvm" else "qemu"


def qemu_img(*args: str) -> str:
    """Run qemu-img; its stderr becomes the error a person reads."""
    try:
        res = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise Internal("qemu-img is not installed (Debian package qemu-utils)") from None
    if res.returncode != 0:
        raise Internal(f"qemu-img {args[0]} failed: {res.stderr.strip() or res.stdout}")
    return res.stdout
