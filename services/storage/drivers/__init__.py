"""Storage pool drivers (one module per backend), in the manner of LXD's storage/drivers.

``load_driver("btrfs")(pool, config, corral_dir)`` gives a stateless view of one pool;
see :class:`base.Driver` for the API.
"""

from __future__ import annotations

from shared.errors import BadRequest

from .base import KINDS, Driver, Info
from .btrfs import BtrfsDriver
from .dir import DirDriver

DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (DirDriver, BtrfsDriver)}


def load_driver(name: str) -> type[Driver]:
    """The driver class for a pool's ``driver`` field; BadRequest for unknown names."""
    try:
        return DRIVERS[name]
    except (KeyError, TypeError):
        raise BadRequest(f"Unknown storage driver {name!r}: available drivers are "
                         f"{', '.join(sorted(DRIVERS))}") from None


__all__ = ["DRIVERS", "KINDS", "Driver", "Info", "BtrfsDriver", "DirDriver", "load_driver"]
