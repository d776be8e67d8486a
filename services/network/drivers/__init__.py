"""Managed-network drivers by type; the network service only talks to ``load``."""

from __future__ import annotations

from pathlib import Path

from shared.errors import BadRequest

from .base import NetworkDriver, validate_network_name
from .bridge import BridgeDriver
from .macvlan import MacvlanDriver

DRIVERS: dict[str, type[NetworkDriver]] = {"bridge": BridgeDriver, "macvlan": MacvlanDriver}


def load(name: str, type: str, config: dict[str, str], corral_dir: str | Path) -> NetworkDriver:
    """A driver object for one network (400 for an unknown type or a bad name)."""
    cls = DRIVERS.get(type)
    if cls is None:
        raise BadRequest(f"Unsupported network type {type!r} (supported: "
                         f"{', '.join(sorted(DRIVERS))})")
    return cls(name, config, corral_dir)


__all__ = ["DRIVERS", "NetworkDriver", "BridgeDriver", "MacvlanDriver", "load",
           "validate_network_name"]
