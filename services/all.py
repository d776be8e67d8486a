"""Single-process mode: every service and the gateway in one process, on one bus connection.

For small hosts. It is the same service classes as the separate processes run; only the
process boundary differs.
"""

# ruff: noqa: E402  (lean.prepare() runs before the other imports)
from __future__ import annotations

from shared import lean

lean.prepare()  # before the bus and structlog are imported (see shared/lean.py)


from shared.service import run_process, run_services

from .gateway.main import gateway_factory, start_http
from .hooks.service import HooksService
from .image.service import ImageService
from .instance.service import InstanceService
from .migration.service import MigrationService
from .network.service import NetworkService
from .storage.service import StorageService

SERVICES = [ImageService, StorageService, NetworkService, InstanceService, MigrationService,
            HooksService]


def main() -> None:
    factories = [lambda c, b, cls=cls: cls(c, b) for cls in SERVICES] + [gateway_factory]
    run_process(run_services(factories, "all", after_start=start_http))


if __name__ == "__main__":
    main()
