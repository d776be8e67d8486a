"""Which driver runs an instance: LXC for containers, QEMU for VMs.

Why a router and no forwarding: the instance's KV record says its ``type``; callers ask
``for_instance(record)`` and then call the driver's declared methods, so every call is
checked against :class:`~.base.InstanceDriver` and nothing reaches into a driver. The
QEMU driver is made lazily and only while libvirtd answers: a host without libvirt still
runs containers, and ``vm_available()`` is what ``GET /1.0`` and VM creation check
(detected each time, never assumed).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared.errors import BadRequest, CorralError

from ..names import host_of
from .base import InstanceDriver

CONTAINER = "container"
VM = "virtual-machine"
TYPES = (CONTAINER, VM)
LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


def type_of(record: Mapping[str, Any]) -> str:
    return record.get("type") or CONTAINER


class DriverRouter:
    """Hands out the driver of an instance type; owns the drivers' construction."""

    def __init__(self, lxc_driver: InstanceDriver, vmpath: Path) -> None:
        self._lxc = lxc_driver
        self.vmpath = Path(vmpath)
        self._qemu: InstanceDriver | None = None
        self._lock = threading.Lock()

    def _qemu_or_none(self) -> InstanceDriver | None:
        """The QEMU driver when libvirt is installed and libvirtd answers, else None."""
        if os.environ.get("CORRAL_VM", "1") == "0":
            return None
        uri = os.environ.get("CORRAL_LIBVIRT_URI", "qemu:///system")
        if uri.startswith("qemu:///") and not os.path.exists(LIBVIRT_SOCK):
            return None  # before importing libvirt (~11 MiB a container-only host never needs)
        try:
            from . import qemu_host
        except ImportError:  # libvirt-python missing
            return None
        try:
            qemu_host.connect()
        except CorralError:
            return None
        with self._lock:
            if self._qemu is None:
                from .qemu import QemuDriver
                self._qemu = QemuDriver(self.vmpath)
            return self._qemu

    def vm_available(self) -> bool:
        return self._qemu_or_none() is not None

    def for_type(self, instance_type: str) -> InstanceDriver:
        """The driver for ``instance_type``; 400 for an unknown type or absent libvirtd."""
        if instance_type == CONTAINER:
            return self._lxc
        if instance_type != VM:
            raise BadRequest(f"Invalid instance type {instance_type!r}: use {CONTAINER} "
                             f"or {VM}")
        drv = self._qemu_or_none()
        if drv is None:
            raise BadRequest("Virtual machines are not available on this host: libvirtd "
                             "is not running (start it with deploy/libvirt.sh up)")
        return drv

    def for_instance(self, record: Mapping[str, Any]) -> InstanceDriver:
        """The driver of the instance whose KV record this is."""
        return self.for_type(type_of(record))

    def available(self) -> list[InstanceDriver]:
        """Every driver that can be asked right now (LXC always, QEMU while libvirtd runs)."""
        qemu = self._qemu_or_none() if self._has_vms() else None
        return [self._lxc, *([qemu] if qemu is not None else [])]

    def all_available(self) -> list[InstanceDriver]:
        """As ``available`` but asks libvirt even when no VM directory exists yet."""
        qemu = self._qemu_or_none()
        return [self._lxc, *([qemu] if qemu is not None else [])]

    def _has_vms(self) -> bool:
        """Any VM directory at all? Asking libvirt costs a round trip per list otherwise."""
        try:
            return any(True for _ in self.vmpath.iterdir())
        except FileNotFoundError:
            return False

    # -- answers over several drivers ----------------------------------------------------

    def host_status(self, record: Mapping[str, Any]) -> str:
        """The instance's driver's ``host_status``; "Error" while its driver is away."""
        try:
            drv = self.for_instance(record)
        except BadRequest:
            return "Error"
        return drv.host_status(host_of(record))

    def list_host(self) -> dict[str, str]:
        """{host name: status} over every available driver (:func:`..names.host_of`)."""
        out: dict[str, str] = {}
        for drv in self.available():
            out.update(drv.list_host())
        return out

    def state_many(self, records: Iterable[Mapping[str, Any]]) -> dict[str, dict]:
        """{host name: state} for these instances, each asked of its own driver."""
        by_type: dict[str, list[str]] = {}
        for r in records:
            by_type.setdefault(type_of(r), []).append(host_of(r))
        out: dict[str, dict] = {}
        for kind, names in by_type.items():
            try:
                drv = self.for_type(kind)
            except BadRequest:
                continue
            out.update(drv.state_many(names))
        return out

    def versions(self) -> dict[str, str]:
        """Driver name -> version, for ``GET /1.0`` (QEMU only when it really answers)."""
        import lxc  # python-lxc: only where a version is asked, so the router imports anywhere

        out = {"lxc": lxc.version}
        if self.vm_available():
            from . import qemu_host
            try:
                v = qemu_host.connect().getVersion()
                out["qemu"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
            except Exception:
                out["qemu"] = ""
        return out
