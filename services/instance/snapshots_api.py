"""``/1.0/instances/<name>/snapshots``: snapshot CRUD, rename, restore, schedules and expiry.

A mixin of :class:`services.instance.service.InstanceService`.
"""

from __future__ import annotations

from shared.models import ObjectRequest, Reply
from shared.service import endpoint

API_EXTENSIONS: list[str] = []


class InstanceSnapshotsMixin:
    """Instance snapshots (the snapshots work of issue 10 fills this in)."""

    @endpoint("snapshot_list", ObjectRequest)
    async def list_snapshots(self, req: ObjectRequest) -> Reply:
        """An instance has no snapshots until this mixin makes them (``lxc info`` asks)."""
        await self.require_instance(req.project, req.name)  # type: ignore[attr-defined]
        return Reply(metadata=[])
