"""Pulling images from image servers: ``image.pull`` (the instance service, for ``POST
/1.0/instances`` with a ``pull`` source) and the pull branch of ``image.create`` (``POST
/1.0/images`` with a ``pull`` source: ``lxc image copy``).

A mixin of :class:`services.image.service.ImageService`; the logic lives in ``pull.py``
and the protocol fetchers (``fetchers.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.errors import BadRequest
from shared.messages.image import PullRequest
from shared.models import CreateRequest, Reply
from shared.service import endpoint

from . import pull
from .fetch_simplestreams import cached_index
from .fetchers import Remote
from .lifecycle import read_settings

# How long image.pull waits for its operation when the image is local already (the
# operation only adds a record): it answers with the ended operation, so the instance
# service does not watch it. Longer means another pull of that image holds its lock.
LOCAL_WAIT = 5.0

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
        """For an instance (``lxc launch remote:alias``): when the image is local already
        the simplestreams index may come from the cache (``cached_index``), and the reply
        carries the operation ended, not running."""
        accept = await self._cache_answers(req)
        if accept is None:
            reply = await self.pulls.start(req)
        else:
            with cached_index(accept):
                reply = await self.pulls.start(req)
        return await self._ended_if_local(req, reply)

    async def _cache_answers(self, req: PullRequest) -> Any:
        """Which answers of a cached index an instance's pull may take: those that change
        nothing against the server's answer now. With auto updates on (PreferCached) a
        launch by alias takes the local auto-updated image of the same source whatever
        the server names; a launch by fingerprint takes that image when it is local. Any
        other answer (a download, images.auto_update_interval 0) reads the server."""
        if not req.cached:
            return None
        settings = await read_settings(self.ctx)
        if settings.auto_update_interval_hours <= 0:
            return None
        records = self.ctx.images.cached()

        def accept(remote: Remote) -> bool:
            alias = remote.update_source.get("alias", "")
            if remote.fingerprint.startswith(alias.lower()):  # asked by fingerprint
                return any(r.get("fingerprint") == remote.fingerprint for r in records)
            want = {k: remote.update_source.get(k, "") for k in ("server", "protocol",
                                                                 "alias")}
            return any(r.get("auto_update") and r.get("type") == remote.type
                       and r.get("architecture") == remote.architecture
                       and {k: (r.get("update_source") or {}).get(k, "") for k in want}
                       == want for r in records)

        return accept

    async def _ended_if_local(self, req: PullRequest, reply: Reply) -> Reply:
        op = reply.operation or {}
        images = (op.get("resources") or {}).get("images") or []
        if not op.get("id") or not images:
            return reply
        fp = images[0].rsplit("/", 1)[-1]
        if not any(r.get("fingerprint") == fp for r in self.ctx.images.cached()):
            return reply  # a download: the caller follows the operation
        try:
            await asyncio.wait_for(self.operations.wait_local(op["id"]), LOCAL_WAIT)
            return Reply(type="async", operation=await self.operations.get(op["id"]))
        except Exception:  # asyncio.TimeoutError included
            return reply  # still running (another pull's lock): the caller follows it
