"""The life of pulled images: cached images expire after ``images.remote_cache_expiry``
days unused, ``auto_update`` images are refreshed every ``images.auto_update_interval``
hours, and ``POST /1.0/images/<fp>/refresh`` (``lxc image refresh``) does it now.

A mixin of :class:`services.image.service.ImageService`; the logic is in ``lifecycle.py``.
The periodic pass runs every ``CORRAL_IMAGE_TASK_INTERVAL`` seconds (default 3600, LXD's
hourly image tasks; tests make it short), its first shortly after the start so a service
restarted more often than that still expires and refreshes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import env_seconds
from shared.messages.image import PullRequest, RefreshRequest
from shared.models import Reply
from shared.service import endpoint

from . import records
from .fetchers import Remote
from .lifecycle import Lifecycle

# LXD's extension for what is implemented here: POST /1.0/images/<fp>/refresh (the
# images.* server keys have no extension of their own; the projects_images_* ones are the
# project-level keys, which Corral does not have).
API_EXTENSIONS: list[str] = ["image_force_refresh"]
ENV_INTERVAL = "CORRAL_IMAGE_TASK_INTERVAL"
DEFAULT_INTERVAL = 3600.0
FIRST_PASS_DELAY = 10.0


def task_interval() -> float:
    return env_seconds(ENV_INTERVAL, DEFAULT_INTERVAL, 0.5)


class LifecycleMixin:
    ctx: Any
    operations: Any
    alias_logic: Any
    image_logic: Any
    log: Any

    async def setup_lifecycle(self) -> None:
        """Called from ImageService.setup (after ctx exists): start the periodic work."""
        self.lifecycle = Lifecycle(self.ctx, self.image_logic, self.alias_logic,
                                   self._pull_for_refresh)
        self._image_task = asyncio.create_task(self._image_task_loop())

    async def _pull_for_refresh(self, req: PullRequest, remote: Remote, op: Any
                                ) -> dict[str, Any]:
        """The pull core's download-and-import (``pull.Pulls``, see pull_api.py) of the
        version the refresh resolved, inside the refresh's own operation: one download
        lock per fingerprint with any other pull of it, progress as download_progress."""
        return await self.pulls._run(req, remote, op)  # type: ignore[attr-defined]

    async def _image_task_loop(self) -> None:
        interval = task_interval()
        await asyncio.sleep(min(interval, FIRST_PASS_DELAY))
        while True:
            await self.lifecycle.run_pass()
            await asyncio.sleep(interval)

    @endpoint("refresh", RefreshRequest)
    async def refresh(self, req: RefreshRequest) -> Reply:
        """``lxc image refresh``: 404 for an unknown image, 400 for one without an update
        source, before any operation starts; then an operation ending with LXD's
        ``{"refreshed": bool}``."""
        from .lifecycle import pull_source

        _k, rec = records.find(self.ctx.images, req.project, req.fingerprint)
        pull_source(rec)  # 400 now rather than a failed operation
        fp = rec["fingerprint"]

        async def run(op: Any) -> dict[str, Any]:
            refreshed = await self.lifecycle.refresh(req.project, fp, op, req.requestor)
            return {"refreshed": refreshed}

        op = await self.operations.start("Refreshing image", run, project=req.project,
                                         resources={"images": [f"/1.0/images/{fp}"]})
        return Reply(type="async", operation=op.lxd())
