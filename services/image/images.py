"""Images: list, show, edit, delete, and the lookups other services make (resolve, blob).

Deleting asks the storage service to drop the image's volumes first: a volume still used by
an instance (409) or a storage service that does not answer (503) fails the delete before
anything is removed, so an image is never half gone.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from shared import blobs
from shared.api import check_etag, listing, string_map, url
from shared.errors import BadRequest, CorralError, NotFound, Unavailable
from shared.filters import compile_filter
from shared.messages.image import ResolveRequest
from shared.messages.storage import ImageVolumeDeleteRequest
from shared.models import ListRequest, Reply, Requestor, lxd_time
from shared.state import key, mutate

from . import aliases as alias_mod
from . import records
from .context import ImageContext
from .imports import check_profiles

# Dropping an image volume from every pool (btrfs subvolume delete, rm -rf) may take a while.
VOLUME_DELETE_TIMEOUT = 120.0
_EDITABLE = ("auto_update", "public", "properties", "expires_at", "profiles")


class Images:
    """The image endpoints' logic; deleting an image drops its aliases through ``aliases``."""

    def __init__(self, ctx: ImageContext, aliases: alias_mod.Aliases) -> None:
        self.ctx = ctx
        self.aliases = aliases
        # last_used_at stamps waiting to be written, and one writer per image (see touch).
        self._wanted: dict[str, str] = {}
        self._stamping: dict[str, asyncio.Lock] = {}

    def _view(self, rec: dict[str, Any]) -> dict[str, Any]:
        project = rec.get("project", "default")
        return records.public(rec, alias_mod.in_project(self.ctx.aliases, project))

    def list(self, req: ListRequest) -> list[Any]:
        test = compile_filter(req.filter)
        recs = [r for r in self.ctx.images.cached()
                if req.all_projects or r.get("project", "default") == req.project]
        items = [(r["fingerprint"], self._view(r))
                 for r in sorted(recs, key=lambda r: r["fingerprint"])]
        items = [(fp, obj) for fp, obj in items if test(obj)]
        return listing("images", items, req.recursion, req.project)

    def get(self, project: str, prefix: str) -> Reply:
        _k, rec = records.find(self.ctx.images, project, prefix)
        return Reply(metadata=self._view(rec), etag=records.image_etag(rec))

    async def update(self, project: str, prefix: str, body: dict[str, Any],
                     if_match: str | None, requestor: Requestor | None, replace: bool) -> None:
        """PUT replaces the editable fields (LXD: profiles default to ["default"]); PATCH
        changes only those given, merging properties."""
        k, rec = records.find(self.ctx.images, project, prefix)
        check_etag(if_match, records.image_etag(rec))
        changes: dict[str, Any] = {}
        for field in ("auto_update", "public"):
            if field in body or replace:
                value = body.get(field, False)
                if not isinstance(value, bool):
                    raise BadRequest(f"Invalid {field}: expected true or false")
                changes[field] = value
        if "properties" in body or replace:
            props = string_map("properties", body.get("properties"))
            changes["properties"] = props if replace else {**rec.get("properties", {}),
                                                           **props}
        if body.get("expires_at"):
            changes["expires_at"] = _expiry(body["expires_at"])
        if replace or "profiles" in body:
            profiles = body.get("profiles")
            if profiles is None:
                profiles = ["default"]
            if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
                raise BadRequest("Invalid profiles: expected a list of profile names")
            await check_profiles(self.ctx, project, profiles)
            changes["profiles"] = profiles
        await mutate(self.ctx.images, k, lambda r: {**r, **changes}, "Image")
        await self.ctx.events.lifecycle("image-updated", url("images", rec["fingerprint"],
                                                             project),
                                        project=project, requestor=requestor)

    async def delete(self, project: str, fp: str, requestor: Requestor | None) -> None:
        """The body of the "Deleting image" operation (``fp`` is the full fingerprint)."""
        k = key(project, fp)
        found = await self.ctx.images.get(k)
        if found is None:
            raise NotFound("Image not found")
        rec = found[0]
        last_copy = not self.ctx.blobs_in_use(fp, but=project)
        if last_copy:
            try:
                await self.ctx.bus.request(
                    "storage", "image_volume_delete",
                    ImageVolumeDeleteRequest(project=project, fingerprint=fp),
                    node=self.ctx.node, timeout=VOLUME_DELETE_TIMEOUT)
            except Unavailable as exc:
                raise Unavailable(f"Cannot delete image {fp[:12]}: the storage service must "
                                  f"drop its volumes first and did not answer ({exc.message})"
                                  "; nothing was removed, try again") from None
        await self.aliases.drop_for(project, fp, requestor)
        await self.ctx.images.delete(k)
        self._stamping.pop(k, None)  # its last_used_at writer (see touch) goes with it
        self._wanted.pop(k, None)
        if last_copy:
            store = await blobs.bucket(self.ctx.bus, records.BUCKET)
            for name in (rec["_blob"].get("meta"), rec["_blob"].get("rootfs")):
                if name:
                    await blobs.delete(store, name)
        await self.ctx.events.lifecycle("image-deleted", url("images", fp, project),
                                        project=project, requestor=requestor)

    async def resolve(self, req: ResolveRequest) -> dict[str, Any]:
        if req.alias:
            found = await self.ctx.aliases.get(key(req.project, req.alias))
            if found is None:
                raise NotFound(f"Image not found: no alias {req.alias!r} in project "
                               f"{req.project!r}")
            k, rec = records.find(self.ctx.images, req.project, found[0]["target"])
        elif req.fingerprint:
            k, rec = records.find(self.ctx.images, req.project, req.fingerprint)
        else:
            raise BadRequest("No image given: set alias or fingerprint")
        if rec["type"] != req.instance_type:
            raise BadRequest(f"Image {rec['fingerprint'][:12]} is a {rec['type']} image; "
                             f"it cannot be used for a {req.instance_type} instance")
        if req.for_create:
            now = lxd_time()
            await self.touch(k, now)
            rec = {**rec, "last_used_at": max(rec.get("last_used_at") or "", now)}
        return self._view(rec)

    async def touch(self, k: str, when: str) -> None:
        """Stamp ``last_used_at`` without making launches race each other.

        Why not one compare-and-set per launch: 30 launches of one image read the same
        revision and all but one lost (409 after 5 tries). The stamp only ever moves
        forward and nobody needs each value, so concurrent callers coalesce: each leaves
        its time in ``_wanted``; one writer per image at a time takes the newest waiting
        time and writes it (compare-and-set with backoff, only against other fields'
        writers or other replicas). 50 launches cost one or two writes. A failed stamp is
        logged, never a failed launch (it is bookkeeping, as in LXD).
        """
        if when > self._wanted.get(k, ""):
            self._wanted[k] = when
        async with self._stamping.setdefault(k, asyncio.Lock()):
            want = self._wanted.pop(k, None)
            if want is None:  # an earlier writer already stored a time as new as ours
                return
            found = await self.ctx.images.get(k)
            if found is None or (found[0].get("last_used_at") or "") >= want:
                return
            try:
                await mutate(self.ctx.images, k, lambda r: {
                    **r, "last_used_at": max(r.get("last_used_at") or "", want)}, "Image")
            except (CorralError, NotFound) as exc:
                self.ctx.log.warning("image last_used_at not stamped", key=k,
                                     error=str(exc))


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _expiry(value: Any) -> str:
    """LXD keeps expires_at as an RFC 3339 time (nanoseconds allowed, so no datetime)."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise BadRequest(f"Invalid expires_at {value!r}: expected an RFC 3339 time such as "
                         "2030-01-01T00:00:00Z")
    return value
