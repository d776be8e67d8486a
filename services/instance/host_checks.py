"""What a user of this host should know, as LXD's warnings: checked when the service starts.

Why at start and in the background: the facts (KVM, AppArmor, cgroup controllers) change
only with the host, and the KVM probe runs QEMU for up to a few seconds, which must not
hold up the service's first answers. Each check gives a message (raise the warning) or None
(the condition is gone: resolve it), so a fixed host clears its warnings on the next start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared import warnings as w

from .drivers.cgroups import hierarchies as cgroup_hierarchies
from .drivers.lxc_config import apparmor_enabled
from .drivers.router import VM, DriverRouter

# Controllers Corral's container limits use, on a cgroup v1 host, and what each is for.
V1_CONTROLLERS = {"memory": "limits.memory", "cpu": "limits.cpu.allowance",
                  "cpuset": "limits.cpu", "pids": "limits.processes",
                  "blkio": "limits.disk.priority and disk limits",
                  "freezer": "pausing containers (lxc pause)",
                  "devices": "device access control"}


def kvm(accel: str | None) -> dict[str, str | None]:
    """``accel`` is what VMs run with ("kvm"/"tcg"), None when VMs are not available."""
    msg = None
    if accel == "tcg":
        msg = ("KVM is not usable on this host (no /dev/kvm, or QEMU cannot run guests with "
               "it): virtual machines run under TCG emulation, which is much slower")
    return {w.INSTANCE_TYPE_NOT_OPERATIONAL: msg}


def confinement(root: Path = Path("/")) -> str:
    """What confines containers besides namespaces: shown in ``GET /1.0`` (``corral
    info``), so a user of a host without AppArmor sees that seccomp is all there is."""
    return "apparmor, seccomp" if apparmor_enabled(root) else "seccomp (no AppArmor here)"


def apparmor(root: Path = Path("/")) -> dict[str, str | None]:
    on = apparmor_enabled(root)
    msg = None if on else ("AppArmor is not available on this kernel: instances run "
                           "without AppArmor confinement (seccomp and namespaces still apply)")
    return {w.APPARMOR_NOT_AVAILABLE: msg}


def cgroups(v1: dict[str, Path], v2: Path | None) -> dict[str, str | None]:
    """Missing controllers and cgroup v1 files whose limits therefore cannot apply."""
    v2_controllers: set[str] = set()
    if v2 is not None:
        try:
            v2_controllers = set((v2 / "cgroup.controllers").read_text().split())
        except OSError:
            pass
    v2_builtin = {"freezer", "devices"}  # cgroup.freeze and BPF device programs
    out: dict[str, str | None] = {}
    for ctrl, used_for in V1_CONTROLLERS.items():
        v2_name = "io" if ctrl == "blkio" else ctrl
        present = ctrl in v1 or v2_name in v2_controllers or (
            v2 is not None and not v1 and ctrl in v2_builtin)
        out[w.MISSING_CGROUP[ctrl]] = None if present else (
            f"The cgroup {ctrl} controller is not mounted on this host: {used_for} "
            "cannot apply to containers")
    blkio = v1.get("blkio")
    weight = None
    if blkio is not None and not any((blkio / f).exists()
                                     for f in ("blkio.weight", "blkio.bfq.weight")):
        weight = ("This host's cgroup v1 blkio controller has no blkio.weight (nor "
                  "blkio.bfq.weight): limits.disk.priority cannot apply")
    out[w.MISSING_CGROUP["blkio.weight"]] = weight
    memory = v1.get("memory")
    swap = None
    if memory is not None and not (memory / "memory.memsw.limit_in_bytes").exists():
        swap = ("This host's cgroup v1 memory controller has no swap accounting "
                "(memory.memsw.*): limits.memory.swap cannot apply")
    out[w.MISSING_CGROUP["memory.memsw"]] = swap
    return out


def vm_accel(drivers: DriverRouter) -> str | None:
    """"kvm"/"tcg" when VMs can run here (libvirtd answers), else None."""
    for drv in drivers.all_available():
        accel = getattr(drv, "accel", None)
        if drv.capabilities.instance_type == VM and accel is not None:
            return str(accel())
    return None


async def check(warnings: w.Warnings, drivers: DriverRouter, log: Any) -> None:
    """Raise or resolve every host warning; runs as a background task of the service."""
    try:
        v1, v2 = await asyncio.to_thread(cgroup_hierarchies)
        checks = {**apparmor(), **cgroups(v1, v2),
                  **kvm(await asyncio.to_thread(vm_accel, drivers))}
        await warnings.apply(checks)
    except Exception as exc:  # a check must never take the service down
        log.warning("host checks failed", error=str(exc))
