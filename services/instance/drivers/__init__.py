"""Instance drivers: one per instance type, behind :class:`base.InstanceDriver`."""

from .base import Capabilities, ExecProcess, InstanceDriver, InstanceSpec

__all__ = ["Capabilities", "ExecProcess", "InstanceDriver", "InstanceSpec", "get_driver"]


def get_driver(instance_type: str, **kwargs) -> InstanceDriver:
    """The driver for ``container`` (LXC) or, later, ``virtual-machine``."""
    if instance_type == "container":
        from .lxc import LXCDriver  # imported lazily: needs python-lxc
        return LXCDriver(**kwargs)
    from shared.errors import BadRequest
    raise BadRequest(f"Unsupported instance type {instance_type!r}")
