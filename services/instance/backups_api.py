"""``/1.0/instances/<name>/backups``: backups in LXD's format, export and import.

A mixin of :class:`services.instance.service.InstanceService`.
"""

from __future__ import annotations

from shared.models import ObjectRequest, Reply
from shared.service import endpoint

API_EXTENSIONS: list[str] = []


class BackupsMixin:
    """Instance backups (the backups work of issue 10 fills this in)."""

    @endpoint("backup_list", ObjectRequest)
    async def list_backups(self, req: ObjectRequest) -> Reply:
        """No backups until this mixin makes them; ``lxc info`` lists them."""
        await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        return Reply(metadata=[])
