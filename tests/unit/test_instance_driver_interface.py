"""Both instance drivers take exactly what the interface declares.

Why: the service calls drivers only through :class:`InstanceDriver`; a driver whose
method takes other parameters (the QEMU driver once took NIC dicts where the LXC driver
took config lines) would fail only at run time, on one instance type.
"""

from __future__ import annotations

import inspect

import pytest

from services.instance import limits
from services.instance.drivers.base import InstanceDriver

lxc_mod = pytest.importorskip("services.instance.drivers.lxc", reason="needs python-lxc")
qemu_mod = pytest.importorskip("services.instance.drivers.qemu", reason="needs libvirt")
DRIVERS = [lxc_mod.LXCDriver, qemu_mod.QemuDriver]
DECLARED = [n for n, f in vars(InstanceDriver).items()
            if callable(f) and not n.startswith("_")]


def _params(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_driver_implements_every_declared_method(driver) -> None:
    assert not getattr(driver, "__abstractmethods__", None)
    for name in DECLARED:
        assert _params(getattr(driver, name)) == _params(getattr(InstanceDriver, name)), name


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_capabilities_match_the_type(driver) -> None:
    caps = driver.capabilities
    assert caps.instance_type in ("container", "virtual-machine")
    assert caps.live_limits <= set(limits.LIMIT_KEYS)
