"""``POST /1.0/images`` from an instance or a snapshot (``lxc publish``), image side.

The request is checked here (LXD's messages), then, as an operation: the instance service
of the node holding the instance packs it into the ``transfers`` object store
(``instance.publish``), and the objects are imported exactly as an upload is
(:mod:`imports`: fingerprint, duplicate check, aliases, ``image-created``), which also
deletes them whatever happens.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import presence
from shared.errors import BadRequest, Conflict, Unavailable
from shared.messages.image import ImportRequest
from shared.messages.publish import COMPRESSIONS, PublishReply, PublishRequest
from shared.models import CreateRequest, Reply
from shared.operations import OperationHandle
from shared.state import key

from . import imports
from .aliases import Aliases
from .context import ImageContext

SOURCE_TYPES = ("instance", "container", "virtual-machine", "snapshot")
# LXD's images.compression_algorithm default.
DEFAULT_COMPRESSION = "gzip"
# Packing a large instance (and converting a VM disk) takes a while.
PUBLISH_TIMEOUT = 3600.0
# The packing instance service is pinged every WATCH_EVERY s, gone after WATCH_GRACE s.
WATCH_EVERY = 1.0
WATCH_GRACE = 4.0


@dataclass
class Publish:
    """A checked publish request."""

    name: str
    snapshot: str | None
    compression: str
    properties: dict[str, str] | None
    public: bool
    aliases: list[dict[str, str]]
    filename: str
    expires_at: int


def _str_map(what: str, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadRequest(f"Invalid {what}: expected an object of strings")
    return {k: "" if v is None else str(v) for k, v in value.items()}


def _expiry(value: Any) -> int:
    if value in (None, "", "0001-01-01T00:00:00Z"):
        return 0
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise BadRequest(f"Invalid expires_at {value!r}: expected an RFC 3339 time") from None


def check(body: dict[str, Any]) -> Publish:
    """400 for what LXD refuses before any work."""
    source = body.get("source") or {}
    kind, name = source.get("type"), source.get("name")
    if kind not in SOURCE_TYPES:
        raise BadRequest(f"Invalid image source type {kind!r}")
    if not isinstance(name, str) or not name:
        raise BadRequest("No source provided: set source.name to an instance or "
                         "INSTANCE/SNAPSHOT")
    parent, _, snap = name.partition("/")
    if kind == "snapshot" and not snap:
        raise BadRequest(f"Not a snapshot: {name!r} (expected INSTANCE/SNAPSHOT)")
    if kind != "snapshot" and _:
        raise BadRequest(f"This is a snapshot: {name!r} (use source.type snapshot)")
    if not parent or "/" in snap:
        raise BadRequest(f"Invalid source name {name!r}")
    compression = body.get("compression_algorithm") or DEFAULT_COMPRESSION
    if compression not in COMPRESSIONS:
        raise BadRequest(f"Unsupported compression algorithm {compression!r}: use one of "
                         f"{', '.join(COMPRESSIONS)}")
    aliases = body.get("aliases") or []
    if not isinstance(aliases, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and a["name"]
            for a in aliases):
        raise BadRequest("Invalid aliases: expected a list of {\"name\": ...}")
    public = body.get("public", False)
    if not isinstance(public, bool):
        raise BadRequest("Invalid public: expected true or false")
    filename = body.get("filename") or ""
    if not isinstance(filename, str):
        raise BadRequest("Invalid filename: expected a string")
    return Publish(name=parent, snapshot=snap or None, compression=compression,
                   properties=_str_map("properties", body.get("properties")), public=public,
                   aliases=[{"name": a["name"], "description": str(a.get("description") or "")}
                            for a in aliases],
                   filename=filename, expires_at=_expiry(body.get("expires_at")))


async def _watched(ctx: ImageContext, ask: PublishRequest) -> Reply:
    """``instance.publish`` with a long deadline, its process watched: if it dies while
    packing, this ends within seconds with a 503 saying so, not after the deadline."""
    service = "corral-instance"
    callee = await presence.instance_on(ctx.bus, service, ctx.node)
    call = asyncio.ensure_future(ctx.bus.request("instance", "publish", ask, node=ctx.node,
                                                 timeout=PUBLISH_TIMEOUT))
    missing = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=WATCH_EVERY)
            if done:
                return call.result()
            if callee is None or await presence.alive(ctx.bus, service, callee):
                missing = 0.0
                continue
            missing += WATCH_EVERY
            if missing >= WATCH_GRACE:
                raise Unavailable("The instance service stopped while packing the image "
                                  "(its process is gone)")
    finally:
        if not call.done():
            call.cancel()
        await asyncio.gather(call, return_exceptions=True)


async def run(ctx: ImageContext, aliases: Aliases, req: CreateRequest, pub: Publish,
              op: OperationHandle) -> dict[str, Any]:
    """The operation: pack on the instance's node, then import. Returns LXD's
    ``{"fingerprint", "size"}``."""
    for alias in pub.aliases:  # before the packing, which a taken alias would waste
        if await ctx.aliases.get(key(req.project, alias["name"])) is not None:
            raise Conflict(f"Alias already exists: {alias['name']}")
    ask = PublishRequest(project=req.project, requestor=req.requestor, name=pub.name,
                         snapshot=pub.snapshot, properties=pub.properties,
                         compression=pub.compression, expires_at=pub.expires_at)
    reply = await _watched(ctx, ask)
    packed = PublishReply.model_validate(reply.metadata)
    return await imports.run(ctx, aliases, ImportRequest(
        project=req.project, requestor=req.requestor, meta=packed.meta, rootfs=packed.rootfs,
        rootfs_part=packed.rootfs_part, filename=pub.filename, public=pub.public,
        properties={}, aliases=pub.aliases), op)
