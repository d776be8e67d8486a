"""One driver object for the service that sends each call to the instance's own driver.

Why a router: the service, its exec/files/console mixins and the lifecycle code call
``driver.<method>(name, ...)`` for every instance. Which driver owns ``name`` is in the
instance's KV record (``type``); the router looks it up and forwards, so that code needs
no ``if vm:`` at each call. The QEMU driver is made lazily and only while libvirtd
answers: a host without libvirt still runs containers, and ``vm_available()`` is what
``GET /1.0`` and VM creation check (detected each time, never assumed).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import lxc

from shared.errors import BadRequest, CorralError, NotFound

from .lxc import _STATUS as LXC_STATUS
from .lxc import LXCDriver

VM = "virtual-machine"
LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


class DriverRouter:
    """Forwards ``method(name, ...)`` to the LXC or QEMU driver by the instance's type."""

    def __init__(self, lxc_driver: LXCDriver, vmpath: Path,
                 type_of: Callable[[str], str]) -> None:
        self.lxc = lxc_driver
        self.vmpath = Path(vmpath)
        self.type_of = type_of
        self._qemu: Any = None
        self._lock = threading.Lock()

    @property
    def lxcpath(self) -> Path:
        return self.lxc.lxcpath

    # -- the VM driver ----------------------------------------------------------------------

    def qemu_or_none(self) -> Any:
        """The QEMU driver when libvirt is installed and libvirtd answers, else None."""
        if os.environ.get("CORRAL_VM", "1") == "0":
            return None
        try:
            from . import qemu_host
        except ImportError:  # libvirt-python missing
            return None
        if qemu_host.URI.startswith("qemu:///") and not os.path.exists(LIBVIRT_SOCK):
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

    @property
    def qemu(self) -> Any:
        drv = self.qemu_or_none()
        if drv is None:
            raise BadRequest("Virtual machines are not available on this host: libvirtd "
                             "is not running (start it with deploy/libvirt.sh up)")
        return drv

    def vm_available(self) -> bool:
        return self.qemu_or_none() is not None

    def versions(self) -> dict[str, str]:
        """Driver name -> version, for ``GET /1.0`` (QEMU only when it really answers)."""
        out = {"lxc": lxc.version}
        if self.vm_available():
            from . import qemu_host
            try:
                v = qemu_host.connect().getVersion()
                out["qemu"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
            except Exception:
                out["qemu"] = ""
        return out

    # -- forwarding -------------------------------------------------------------------------

    def for_name(self, name: str) -> Any:
        return self.qemu if self.type_of(name) == VM else self.lxc

    def for_type(self, instance_type: str) -> Any:
        return self.qemu if instance_type == VM else self.lxc

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or not callable(getattr(self.lxc, attr, None)):
            raise AttributeError(attr)

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            drv = self.for_name(name)
            fn = getattr(drv, attr, None)
            if fn is None:
                raise BadRequest(f"Instance {name!r} is a {self.type_of(name)}: "
                                 f"{attr.replace('_', ' ')} is not supported for it yet")
            return fn(name, *args, **kwargs)

        return call

    def host_status(self, name: str) -> str:
        """Running/Stopped/Frozen from LXC's monitor or libvirt (no process spawned)."""
        if self.type_of(name) == VM:
            drv = self.qemu_or_none()
            if drv is None:
                return "Error"
            try:
                return drv._status(drv._domain(name))[0]
            except NotFound:
                return "Stopped"
        c = lxc.Container(name, str(self.lxc.lxcpath))
        if not c.defined:
            return "Stopped"
        return LXC_STATUS.get(c.state, ("Error", 112))[0]

    def list_host(self) -> dict[str, str]:
        out = self.lxc.list_host()
        if self._has_vms():
            drv = self.qemu_or_none()
            if drv is not None:
                out.update(drv.list_host())
        return out

    def _has_vms(self) -> bool:
        """Any VM directory at all? Asking libvirt costs a round trip per list otherwise."""
        try:
            return any(True for _ in self.vmpath.iterdir())
        except FileNotFoundError:
            return False

    def list_vms(self) -> dict[str, str] | None:
        """{name: status} of our VMs, or None when libvirt cannot be asked."""
        drv = self.qemu_or_none()
        return None if drv is None else drv.list_host()

    def state_many(self, names: list[str]) -> dict[str, dict]:
        vms = [n for n in names if self.type_of(n) == VM]
        out = self.lxc.state_many([n for n in names if n not in vms])
        if vms:
            drv = self.qemu_or_none()
            if drv is not None:
                out.update(drv.state_many(vms))
        return out

    def agent_ready(self, name: str) -> None:
        """Raise at once (503 "VM agent isn't currently running") unless the agent is up."""
        if self.type_of(name) == VM:
            self.qemu._agent(name)

    def console_dir(self, name: str) -> Path:
        """Where the instance's console.log lives."""
        return (self.vmpath if self.type_of(name) == VM else self.lxc.lxcpath) / name
