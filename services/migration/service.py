"""The migration service: copy, move and live-migrate instances between nodes."""

from __future__ import annotations

from shared.models import ListRequest, Reply
from shared.service import Service, endpoint, main_for


class MigrationService(Service):
    name = "migration"
    description = "Corral migrations between nodes"

    @endpoint("list", ListRequest)
    async def list_migrations(self, req: ListRequest) -> Reply:
        """Migrations under way (none yet: copy/move arrive with the migration issue)."""
        return Reply(metadata=[])


main = main_for(MigrationService)
