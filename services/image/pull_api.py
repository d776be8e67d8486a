"""Pulling images from image servers: ``image.pull`` (the instance service, for ``POST
/1.0/instances`` with a ``pull`` source) and the pull branch of ``image.create`` (``POST
/1.0/images`` with a ``pull`` source: ``lxc image copy``).

A mixin of :class:`services.image.service.ImageService`; the logic lives in ``pull.py``
and the protocol fetchers (``fetchers.py``).
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.errors import BadRequest
from shared.messages.image import PullRequest
from shared.models import CreateRequest, Reply
from shared.service import endpoint

from . import pull

# LXD's extensions for what is implemented here ("image_types", used by the source's
# image_type, is the service's own list already). "instance_oci" is Incus's: pulls from
# OCI registries (protocol oci) run as application containers.
API_EXTENSIONS: list[str] = ["instance_oci"]


class PullMixin:
    """Uses the service's ctx, alias_logic, operations (see ImageService)."""

    ctx: Any
    alias_logic: Any
    operations: Any

    async def setup_pull(self) -> None:
        """Called from ImageService.setup (after ctx exists): remove the temp dirs of pulls
        a crash interrupted (nothing was recorded for them: see pull.py)."""
        await pull.recover(self.ctx)
        self.pulls = pull.Pulls(self.ctx, self.alias_logic, self.operations)

    async def create_from_source(self, req: CreateRequest) -> Reply:
        """``POST /1.0/images`` with ``source.mode: pull`` (``lxc image copy``)."""
        source = req.body.get("source") or {}
        if source.get("type") == "url":
            raise BadRequest("Images from a URL (source.type url) are not supported: use an "
                             "image server (simplestreams or lxd protocol)")
        if source.get("mode", "pull") != "pull":
            raise BadRequest(f"Invalid source mode {source.get('mode')!r}: use pull")
        preq = pull.request_from_body(req.body, req.project, req.requestor, uuid.uuid4().hex)
        return await self.pulls.start(preq)

    @endpoint("pull", PullRequest)
    async def pull(self, req: PullRequest) -> Reply:
        return await self.pulls.start(req)
