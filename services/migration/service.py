"""The migration service: instances between servers over LXD's migration API.

``source`` answers ``POST /1.0/instances/<name>`` with ``migration: true`` (source.py);
``create`` answers ``POST /1.0/instances`` with ``source.type: migration`` (sink.py). The
transfers run here, the process that may run long; the gateway only relays the websockets
clients dial into it. See docs/migration.md.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from shared.log import get_logger
from shared.models import CreateRequest, ListRequest, ObjectRequest, Reply, ServerInfoReply
from shared.service import Service, endpoint, main_for

from . import frozen, sink, source

log = get_logger()


class MigrationService(Service):
    name = "migration"
    description = "Corral migrations between servers"

    async def setup(self) -> None:
        """A migration killed mid-way left only its staging directory: remove them all
        (nothing was made on the target before the import, which cleans itself)."""
        root = sink.staging_root(self.config)
        if root.is_dir():
            stale = [p for p in root.iterdir()]
            for p in stale:
                await asyncio.to_thread(shutil.rmtree, p, True)
            if stale:
                log.info("stale migration staging removed", count=len(stale))
        # read-only copies a killed btrfs send left on a source (the storage service may
        # not answer yet: retried in the background)
        self._sweep = asyncio.create_task(frozen.sweep(self.bus, self.config))

    def server_cert(self) -> tuple[Path, Path]:
        """This server's certificate and key (the gateway makes them): the client
        certificate we present when dialling another server, as LXD does."""
        crt, key = Path(self.config.dir) / "server.crt", Path(self.config.dir) / "server.key"
        if not (crt.exists() and key.exists()):
            from shared.errors import Unavailable
            raise Unavailable("This server has no certificate yet (the gateway makes it): "
                              "start the gateway first")
        return crt, key

    def server_info(self) -> ServerInfoReply:
        """The migration API extensions the stock client checks before push and relay
        copies, and before ``--instance-only``; ``cluster_internal_copy``: a copy to another
        cluster member is one request to the cluster (the gateway's cluster_move.py)."""
        return ServerInfoReply(api_extensions=["container_push", "container_push_target",
                                               "container_only_migration",
                                               "cluster_internal_copy"])

    @endpoint("list", ListRequest)
    async def list_migrations(self, req: ListRequest) -> Reply:
        """Migrations under way are operations; nothing else to list."""
        return Reply(metadata=[])

    @endpoint("source", ObjectRequest)
    async def migration_source(self, req: ObjectRequest) -> Reply:
        """``POST /1.0/instances/<name>`` ``{"migration": true}``: the source operation."""
        return await source.start(self, req)

    @endpoint("create", CreateRequest)
    async def migration_create(self, req: CreateRequest) -> Reply:
        """``POST /1.0/instances`` ``{"source": {"type": "migration"}}``: the target."""
        return await sink.start(self, req)


main = main_for(MigrationService)
