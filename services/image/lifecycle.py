"""The life of pulled images: expiry of cached images, refresh of ``auto_update`` ones.

LXD's rules (lxd/images.go: pruneExpiredImages, autoUpdateImage, imageRefresh):

- A cached image (pulled to create an instance, ``cached: true``) unused for more than
  ``images.remote_cache_expiry`` days (``last_used_at``, else ``uploaded_at``) is deleted
  through the same path as ``DELETE /1.0/images/<fp>`` (aliases, storage volumes, files).
  A pool that still needs its volume (btrfs clones of it) refuses with 409: the image stays,
  logged, and the next pass tries again.
- A refresh asks the image's ``update_source`` which fingerprint its alias names now;
  when it differs, it pulls that image (the pull core), gives it the old one's
  ``cached``/``last_used_at``/``auto_update``/``public``/``profiles``, moves the aliases
  to it and deletes the old image; ``image-refreshed`` (with the old fingerprint, as LXD)
  is sent. The operation's metadata says ``{"refreshed": bool}``.

Crash safety: nothing is undone. A refresh killed after the pull (``refresh:after_pull``)
or between two alias moves (``refresh:after_alias``) leaves both versions, the aliases on
either; the next refresh of either version (by hand, or the task once a check is due)
finds the new version local, moves what is left to it and deletes the old one.

Where Corral differs: LXD checks every ``auto_update`` image when the hours since the
daemon started are a multiple of ``images.auto_update_interval``, so a restart moves the
schedule and a daemon restarted more often than that never checks. Here each image keeps
when it was last checked (``_update_checked_at`` in its record, private: the API does not
show it; pull time when never checked) and is checked once that is ``interval`` hours old.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from shared import faults
from shared.api import url
from shared.errors import BadRequest, CorralError, NotFound
from shared.image.settings import BUCKET, ENTRY, ImageSettings
from shared.messages.image import PullRequest, PullSource
from shared.models import Requestor, lxd_time
from shared.operations import parse_lxd_time
from shared.state import Store, key, mutate

from .aliases import Aliases, in_project
from .context import ImageContext
from .fetchers import Remote
from .images import Images
from .protocols import fetcher

CHECKED = "_update_checked_at"
# pull(request, resolved remote, operation) -> {"fingerprint": fp, ...}: the pull core's
# download-and-import of an image already resolved (the refresh resolved it to compare).
Puller = Callable[[PullRequest, Remote, Any], Awaitable[dict[str, Any]]]


class _NoOperation:
    """Where a periodic refresh's progress goes: nowhere (no client waits for it)."""

    async def set_metadata(self, **_metadata: Any) -> None:
        return None


# -- pure rules ---------------------------------------------------------------------------

def _when(value: Any) -> float | None:
    """Seconds since the epoch of an LXD time; None for unset or Go's zero time."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        return parse_lxd_time(value)
    except ValueError:
        return None


def cache_expired(rec: dict[str, Any], now: float, days: int) -> bool:
    """Whether a cached image has been unused for more than ``days`` (0: never expires)."""
    if not rec.get("cached") or days <= 0:
        return False
    since = _when(rec.get("last_used_at")) or _when(rec.get("uploaded_at"))
    if since is None:
        since = _when(rec.get("created_at"))
    return since is not None and now - since > days * 86400


def update_due(rec: dict[str, Any], now: float, hours: int) -> bool:
    """Whether an ``auto_update`` image's source should be asked again (0: never)."""
    if not rec.get("auto_update") or hours <= 0 or not _source(rec):
        return False
    since = _when(rec.get(CHECKED)) or _when(rec.get("uploaded_at"))
    return since is None or now - since >= hours * 3600


def _source(rec: dict[str, Any]) -> dict[str, Any] | None:
    src = rec.get("update_source")
    if isinstance(src, dict) and src.get("server") and (src.get("alias")
                                                        or src.get("fingerprint")):
        return src
    return None


def pull_source(rec: dict[str, Any]) -> PullSource:
    """What to ask the image's server again (LXD's update_source; 400 when it has none)."""
    src = _source(rec)
    if src is None:
        raise BadRequest(f"Image {rec['fingerprint'][:12]} has no update source: only "
                         "images pulled from an image server by alias can be refreshed")
    return PullSource(server=src["server"], protocol=src.get("protocol") or "lxd",
                      alias=src.get("alias") or None,
                      fingerprint=None if src.get("alias") else src.get("fingerprint"),
                      certificate=src.get("certificate") or "",
                      image_type=src.get("image_type") or rec.get("type", ""),
                      project=rec.get("project", "default"))


async def read_settings(ctx: ImageContext) -> ImageSettings:
    """The images.* server config (defaults when unset or the bucket cannot be read: the
    periodic task must not stop because the gateway never wrote a config)."""
    try:
        store = await Store(ctx.bus, BUCKET).open()
        found = await store.get(ENTRY)
    except Exception as exc:  # a missing bucket or permission: defaults, logged
        ctx.log.debug("server config not readable, image defaults used", error=str(exc))
        return ImageSettings()
    config = (found[0].get("config") if found else None) or {}
    return ImageSettings.from_config(config)


# -- the logic ----------------------------------------------------------------------------

class Lifecycle:
    """Refresh and expiry over the service's stores; one refresh per image at a time."""

    def __init__(self, ctx: ImageContext, images: Images, aliases: Aliases,
                 pull: Puller) -> None:
        self.ctx = ctx
        self.images = images
        self.aliases = aliases
        self.pull = pull
        self._locks: dict[str, asyncio.Lock] = {}

    async def refresh(self, project: str, fp: str, op: Any = None,
                      requestor: Requestor | None = None) -> bool:
        """Take the newer version of image ``fp`` if its source has one; True if it did."""
        async with self._locks.setdefault(key(project, fp), asyncio.Lock()):
            found = await self.ctx.images.get(key(project, fp))
            if found is None:
                raise NotFound("Image not found")
            old = found[0]
            source = pull_source(old)
            remote = await fetcher(source.protocol).resolve(source, old["type"])
            await self._checked(project, fp)
            if remote.fingerprint == fp:
                self.ctx.log.info("image up to date", fingerprint=fp, server=source.server)
                await self._absorb_leftovers(project, old, requestor)
                return False
            self.ctx.log.info("image refresh", fingerprint=fp, new=remote.fingerprint,
                              server=source.server, alias=source.alias)
            done = await self.pull(PullRequest(
                project=project, requestor=requestor, source=source,
                request_id=f"refresh-{project}-{fp}-{remote.fingerprint}",
                cached=bool(old.get("cached")), instance_type=old["type"],
                auto_update=bool(old.get("auto_update")), public=bool(old.get("public")),
                profiles=old.get("profiles")), remote, op or _NoOperation())
            new_fp = done["fingerprint"]
            if new_fp == fp:
                return False
            faults.point("refresh:after_pull")
            await self._inherit(project, old, new_fp)
            await self._replace(project, fp, new_fp, requestor)
            await self.ctx.events.lifecycle("image-refreshed", url("images", fp, project),
                                            project=project, requestor=requestor)
            return True

    async def _replace(self, project: str, fp: str, new_fp: str,
                       requestor: Requestor | None) -> None:
        """Aliases of ``fp`` move to ``new_fp``, then ``fp`` is deleted; a pool that still
        needs its volume (409) keeps it, without auto_update (never refreshed again)."""
        for alias in in_project(self.ctx.aliases, project):
            if alias.get("target") == fp:
                await self.aliases.update(project, alias["name"], {"target": new_fp},
                                          None, requestor, replace=False)
                faults.point("refresh:after_alias")
        try:
            await self.images.delete(project, fp, requestor)
        except CorralError as exc:
            self.ctx.log.warning("refreshed image's old version kept", fingerprint=fp,
                                 new=new_fp, error=exc.message)
            await mutate(self.ctx.images, key(project, fp),
                         lambda r: {**r, "auto_update": False}, "Image")

    async def _absorb_leftovers(self, project: str, current: dict[str, Any],
                                requestor: Requestor | None) -> None:
        """Older ``auto_update`` versions of the same source still here (a refresh that
        died before it deleted them, some aliases moved, some not) are finished now, as
        their own next check would: aliases to the current version, then deleted."""
        def where(rec: dict[str, Any]) -> tuple[str, ...] | None:
            src = _source(rec)
            return None if src is None else (
                src.get("server") or "", src.get("protocol") or "lxd",
                src.get("alias") or "", src.get("image_type") or rec.get("type", ""))

        mine = where(current)
        for rec in list(self.ctx.images.cached()):
            if (rec.get("project", "default") != project
                    or rec["fingerprint"] == current["fingerprint"]
                    or not rec.get("auto_update") or where(rec) != mine):
                continue
            self.ctx.log.info("older version of a refreshed image replaced",
                              fingerprint=rec["fingerprint"], new=current["fingerprint"])
            try:
                await self._replace(project, rec["fingerprint"], current["fingerprint"],
                                    requestor)
            except (CorralError, NotFound) as exc:
                self.ctx.log.warning("older image version not replaced",
                                     fingerprint=rec["fingerprint"], error=str(exc))

    async def _inherit(self, project: str, old: dict[str, Any], new_fp: str) -> None:
        """The new version keeps what the user set on the old one (LXD: cached and
        last use date, default profiles; auto_update and public as pulled)."""
        def change(r: dict[str, Any]) -> dict[str, Any]:
            return {**r, "cached": bool(old.get("cached")),
                    "auto_update": bool(old.get("auto_update")),
                    "public": bool(old.get("public")),
                    "profiles": list(old.get("profiles") or ["default"]),
                    "last_used_at": max(r.get("last_used_at") or "",
                                        old.get("last_used_at") or ""),
                    CHECKED: lxd_time()}

        await mutate(self.ctx.images, key(project, new_fp), change, "Image")

    async def _checked(self, project: str, fp: str) -> None:
        try:
            await mutate(self.ctx.images, key(project, fp),
                         lambda r: {**r, CHECKED: lxd_time()}, "Image")
        except (CorralError, NotFound) as exc:  # bookkeeping: never fails a refresh
            self.ctx.log.warning("image check time not stored", fingerprint=fp,
                                 error=str(exc))

    # -- the periodic pass ----------------------------------------------------------------

    async def expire_cached(self, settings: ImageSettings, now: float | None = None
                            ) -> list[str]:
        """Delete cached images unused for too long; the fingerprints deleted."""
        now = time.time() if now is None else now
        gone = []
        for rec in list(self.ctx.images.cached()):
            if not cache_expired(rec, now, settings.remote_cache_expiry_days):
                continue
            project, fp = rec.get("project", "default"), rec["fingerprint"]
            try:
                async with self._locks.setdefault(key(project, fp), asyncio.Lock()):
                    # a launch may have used it since the list was taken: look again
                    found = await self.ctx.images.get(key(project, fp))
                    if found is None or not cache_expired(
                            found[0], now, settings.remote_cache_expiry_days):
                        continue
                    await self.images.delete(project, fp, None)
            except CorralError as exc:  # 409 from a pool, 503: kept, next pass again
                self.ctx.log.warning("expired cached image kept", fingerprint=fp,
                                     project=project, error=exc.message)
                continue
            self.ctx.log.info("expired cached image deleted", fingerprint=fp,
                              project=project)
            gone.append(fp)
        return gone

    async def auto_update(self, settings: ImageSettings, now: float | None = None
                          ) -> list[str]:
        """Refresh the ``auto_update`` images whose check is due; the ones refreshed."""
        now = time.time() if now is None else now
        done = []
        for rec in list(self.ctx.images.cached()):
            if not update_due(rec, now, settings.auto_update_interval_hours):
                continue
            project, fp = rec.get("project", "default"), rec["fingerprint"]
            try:
                if await self.refresh(project, fp):
                    done.append(fp)
            except CorralError as exc:  # an unreachable server: logged, checked again
                self.ctx.log.warning("image auto update failed", fingerprint=fp,
                                     project=project, error=exc.message)
                await self._checked(project, fp)
            except Exception as exc:  # a fetcher's bug must not stop the pass
                self.ctx.log.warning("image auto update failed", fingerprint=fp,
                                     project=project, error=repr(exc))
                await self._checked(project, fp)
        return done

    async def run_pass(self) -> None:
        settings = await read_settings(self.ctx)
        for step in (self.expire_cached, self.auto_update):
            try:
                await step(settings)
            except Exception as exc:  # never let the periodic task die
                self.ctx.log.warning("image task step failed", step=step.__name__,
                                     error=repr(exc))
        # the sign a pass ended (tests wait for it rather than for a guessed time)
        self.ctx.log.debug("image task pass done")
