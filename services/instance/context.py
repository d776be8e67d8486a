"""What the instance logic modules need from the service, and nothing more.

Why: ``create``, ``lifecycle``, ``update`` and ``reconcile`` used to take the whole
service object, which tied them to ``service.py`` (an import circle) and hid what each
really used. The service builds one :class:`Context` at setup and passes it; unit tests
build one from fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.state import Store

from .drivers.router import DriverRouter
from .profiles import Profiles
from .projects import Projects
from .remote import Remote


@dataclass(frozen=True)
class Context:
    instances: Store  # KV records of instances (cached: single writer)
    profiles: Profiles
    remote: Remote  # image, storage and network services
    drivers: DriverRouter
    log: Any  # the service's structlog logger
    projects: Projects | None = None  # limits, restrictions, effective project (None: only default)
    snapshots: Store | None = None  # KV instance_snapshots (see snapshots.py); None in unit fakes
    # This node's name in a cluster; "" standalone, where every record is this host's.
    node: str = ""

    @property
    def location(self) -> str:
        """What a record made here says of its place (LXD: "none" standalone)."""
        return self.node or "none"

    def is_local(self, rec: dict[str, Any]) -> bool:
        """The record's instance lives on this host. Why it matters: cluster nodes share
        the KV buckets, and a node must never start, purge or repair another's instance."""
        return not self.node or rec.get("location") == self.node

    def local(self) -> list[dict[str, Any]]:
        """The cached records of the instances located on this host (all, standalone)."""
        return [r for r in self.instances.cached() if self.is_local(r)]
