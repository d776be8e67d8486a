"""Instance drivers: one per instance type, behind :class:`base.InstanceDriver`.

``lxc.LXCDriver`` (containers) and ``qemu.QemuDriver`` (VMs, needs libvirt-python) are
imported by name where they are built; ``router.DriverRouter`` hands them out per instance.
"""

from .base import Capabilities, ExecProcess, InstanceDriver, InstanceSpec

__all__ = ["Capabilities", "ExecProcess", "InstanceDriver", "InstanceSpec"]
