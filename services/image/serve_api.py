"""Serving images to others: one-time secrets of private images (``POST
/1.0/images/<fp>/secret``) and the public images as a simplestreams tree (``image.streams``,
answered on the gateway's ``/streams/v1/...``).

A mixin of :class:`services.image.service.ImageService`.
"""

from __future__ import annotations

from typing import Any

from shared.errors import BadRequest
from shared.messages.image import SecretRequest, StreamsRequest
from shared.models import Reply
from shared.service import endpoint

API_EXTENSIONS: list[str] = []


class ServeMixin:
    ctx: Any
    operations: Any

    async def setup_serve(self) -> None:
        """Called from ImageService.setup (after ctx exists)."""

    @endpoint("secret", SecretRequest)
    async def secret(self, req: SecretRequest) -> Reply:
        raise BadRequest("Image secrets are not implemented yet")

    @endpoint("streams", StreamsRequest)
    async def streams(self, req: StreamsRequest) -> Reply:
        raise BadRequest("The simplestreams tree is not implemented yet")
