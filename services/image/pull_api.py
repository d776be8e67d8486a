"""Pulling images from image servers: ``image.pull`` (the instance service, for ``POST
/1.0/instances`` with a ``pull`` source) and the pull branch of ``image.create`` (``POST
/1.0/images`` with a ``pull`` source: ``lxc image copy``).

A mixin of :class:`services.image.service.ImageService`; the logic lives in ``pull.py``
and the protocol fetchers (``fetchers.py``).
"""

from __future__ import annotations

from typing import Any

from shared.errors import BadRequest
from shared.messages.image import PullRequest
from shared.models import CreateRequest, Reply
from shared.service import endpoint

# LXD's extensions for what is implemented here (added as it lands).
API_EXTENSIONS: list[str] = []


class PullMixin:
    """Uses the service's ctx, alias_logic, operations (see ImageService)."""

    ctx: Any
    alias_logic: Any
    operations: Any

    async def setup_pull(self) -> None:
        """Called from ImageService.setup (after ctx exists): resume or clean pulls that
        a crash interrupted."""

    async def create_from_source(self, req: CreateRequest) -> Reply:
        """``POST /1.0/images`` with ``source.mode: pull`` (or type ``url``)."""
        raise BadRequest("remote image sources are not supported yet: download the image "
                         "and import the file (lxc image import FILE)")

    @endpoint("pull", PullRequest)
    async def pull(self, req: PullRequest) -> Reply:
        raise BadRequest("Pulling images from image servers is not implemented yet")
