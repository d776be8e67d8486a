"""The life of pulled images: cached images expire after ``images.remote_cache_expiry``
days unused, ``auto_update`` images are refreshed every ``images.auto_update_interval``
hours, and ``POST /1.0/images/<fp>/refresh`` (``lxc image refresh``) does it now.

A mixin of :class:`services.image.service.ImageService`.
"""

from __future__ import annotations

from typing import Any

from shared.errors import BadRequest
from shared.messages.image import RefreshRequest
from shared.models import Reply
from shared.service import endpoint

API_EXTENSIONS: list[str] = []


class LifecycleMixin:
    ctx: Any
    operations: Any

    async def setup_lifecycle(self) -> None:
        """Called from ImageService.setup (after ctx exists): start the periodic work."""

    @endpoint("refresh", RefreshRequest)
    async def refresh(self, req: RefreshRequest) -> Reply:
        raise BadRequest("Image refresh is not implemented yet")
