"""The gateway process: a micro service on the bus plus the HTTP API on the unix socket."""

from __future__ import annotations

from shared import lean

lean.prepare()  # before the bus and structlog are imported (see shared/lean.py)

from typing import Awaitable, Callable  # noqa: E402

from shared.bus import Bus  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.models import ServerInfoReply  # noqa: E402
from shared.service import Service, run_process, run_services  # noqa: E402

from .app import VERSION, Gateway  # noqa: E402


class GatewayService(Service):
    """The gateway's presence on the bus, so ``$SRV.PING`` finds it with the services."""

    name = "gateway"
    version = VERSION
    description = "Corral gateway: the LXD REST API over the unix socket"

    def server_info(self) -> ServerInfoReply:
        return ServerInfoReply(environment={"socket": str(self.config.socket_path)})


def gateway_factory(config: Config, bus: Bus | None) -> GatewayService:
    return GatewayService(config, bus)


async def start_http(services: list[Service]) -> Callable[[], Awaitable[None]]:
    """Serve HTTP next to the gateway's bus presence (also used by single-process mode)."""
    svc = next(s for s in services if isinstance(s, GatewayService))
    gw = Gateway(svc.config, svc.bus, svc.operations)
    await gw.start()
    return gw.stop


def main() -> None:
    run_process(run_services([gateway_factory], "gateway", after_start=start_http))


if __name__ == "__main__":
    main()
