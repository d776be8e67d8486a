"""Pulling an image from an image server: resolve, reuse what is local, download, import.

Why in this order: the fetcher's ``resolve`` says which image the source means (its
fingerprint) from the server's index alone, so a 404, a TLS failure or an unreachable
server is an error envelope before any operation starts, and an image already in the
project is used as it is (LXD: a pull of a local fingerprint only adds what the request
asks). Otherwise the operation downloads into a private temp dir under ``$CORRAL_DIR/tmp``
(every file checked: sha256 and size), checks the fingerprint against the server's
(``combined_*_sha256`` for split images, as LXD), and stores the image exactly as an upload
(``imports.store``), with the pull's fields: ``cached`` (pulled for an instance),
``auto_update`` and ``update_source``.

Concurrent pulls share: the same ``request_id`` (a caller's resend) joins the running
operation; the same remote fingerprint waits for the download in flight and then takes
its result (its own aliases and fields added), so an image is downloaded once.

Crash safety: nothing is recorded before the files are whole and checked; a process killed
mid-download leaves only its ``image-pull-*`` temp dir, removed at the next start
(``recover``; one killed while storing also left a journal naming the objects it may
have written without a record, removed then too), and its operation is failed by the
operations' owner check. Fault points (``shared/faults.py``): ``pull:downloading`` (a
file partly downloaded), ``pull:after_download`` (all files checked, nothing stored
yet), ``image:after_blobs`` (``imports._store``: objects written, no record yet).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from shared import blobs, faults
from shared.errors import BadRequest, Conflict
from shared.image.download import Rate
from shared.messages.image import PullRequest, PullSource
from shared.models import Reply, lxd_time
from shared.operations import OperationHandle
from shared.state import key, mutate

from . import imports, protocols, records
from .aliases import Aliases
from .context import ImageContext
from .fetchers import Remote
from .lifecycle import read_settings

TMP_PREFIX = "image-pull-"


JOURNAL = "journal.json"


async def recover(ctx: ImageContext) -> int:
    """Undo the pulls a crash interrupted (at the service's start, before any pull runs);
    how many. A temp dir with a journal died while storing: the objects it may have
    written go unless a record holds that fingerprint. Then the temp dir goes."""
    n = 0
    for stale in ctx.tmp_dir.glob(TMP_PREFIX + "*"):
        journal = stale / JOURNAL
        try:
            fp = json.loads(journal.read_text())["fingerprint"] if journal.exists() else None
        except (OSError, ValueError, KeyError):
            fp = None
        if fp and not any(r["fingerprint"] == fp for r in ctx.images.cached()):
            store = await blobs.bucket(ctx.bus, records.BUCKET)
            for name in records.object_names(fp, True).values():
                if name:
                    await blobs.delete(store, name)
        shutil.rmtree(stale, ignore_errors=True)
        n += 1
    return n


class Pulls:
    """The image service's pulls: who is downloading what."""

    def __init__(self, ctx: ImageContext, aliases: Aliases, operations: Any) -> None:
        self.ctx = ctx
        self.aliases = aliases
        self.operations = operations
        self._by_request: dict[str, dict[str, Any]] = {}  # request_id -> operation (lxd)
        self._locks: dict[str, asyncio.Lock] = {}  # remote fingerprint -> download lock
        self._waiting: dict[str, list[Any]] = {}  # fingerprint -> operations waiting for it

    async def start(self, req: PullRequest) -> Reply:
        """Resolve now (errors as envelopes), then the operation."""
        if req.request_id and req.request_id in self._by_request:
            return Reply(type="async", operation=self._by_request[req.request_id])
        src = req.source
        if not src.server:
            raise BadRequest("The image source needs a server (source.server)")
        if not (src.alias or src.fingerprint):
            raise BadRequest("The image source needs an alias or a fingerprint")
        if src.image_type and src.image_type not in ("container", "virtual-machine"):
            raise BadRequest(f"Invalid image_type {src.image_type!r}: use container or "
                             "virtual-machine")
        fetcher = protocols.fetcher(src.protocol)
        remote = await fetcher.resolve(src, req.instance_type)
        if req.cached:  # for an instance: LXD's images.auto_update_cached and PreferCached
            settings = await read_settings(self.ctx)
            if settings.auto_update_cached and not req.auto_update:
                req = req.model_copy(update={"auto_update": True})
            if settings.auto_update_interval_hours > 0:
                remote = self._prefer_cached(req, remote)
        if req.instance_type and remote.type != req.instance_type:
            raise BadRequest(f"Image {src.alias or src.fingerprint!r} on {src.server} is a "
                             f"{remote.type} image, not for a {req.instance_type}")
        for alias in req.aliases:  # a taken alias is a 409 before anything is downloaded
            name = alias.get("name", "")
            if not name:
                raise BadRequest("An image alias needs a name")
            held = await self.ctx.aliases.get(key(req.project, name))
            if held is not None and held[0].get("target") != remote.fingerprint:
                raise Conflict(f"Alias already exists: {name}")

        ended = False

        async def run(op: OperationHandle) -> dict[str, Any]:
            nonlocal ended
            try:
                return await self._run(req, remote, op)
            finally:
                ended = True
                self._by_request.pop(req.request_id, None)

        op = await self.operations.start(
            "Downloading image", run, project=req.project, may_cancel=True,
            resources={"images": [f"/1.0/images/{remote.fingerprint}"]})
        lxd = op.lxd()
        if req.request_id and not ended:  # a resend joins it while it runs
            self._by_request[req.request_id] = lxd
        return Reply(type="async", operation=lxd)

    def _prefer_cached(self, req: PullRequest, remote: Remote) -> Remote:
        """An instance launched by alias uses the local auto-updated image pulled from the
        same server, protocol and alias (its periodic refresh keeps it current) rather
        than downloading the version the server names now; as LXD (``PreferCached``).
        This project's copy first, then the newest of another project's."""
        alias = remote.update_source.get("alias", "")
        if not alias or remote.fingerprint.startswith(alias.lower()):
            return remote  # asked by fingerprint: that exact image
        want = {k: remote.update_source.get(k, "") for k in ("server", "protocol", "alias")}
        found = [r for r in self.ctx.images.cached() if r.get("auto_update")
                 and r.get("type") == remote.type
                 and r.get("architecture") == remote.architecture
                 and {k: (r.get("update_source") or {}).get(k, "") for k in want} == want]
        if not found:
            return remote
        found.sort(key=lambda r: (r.get("project") == req.project, r.get("created_at", "")))
        return replace(remote, fingerprint=found[-1]["fingerprint"])

    async def _run(self, req: PullRequest, remote: Remote, op: OperationHandle
                   ) -> dict[str, Any]:
        fp = remote.fingerprint
        lock = self._locks.setdefault(fp, asyncio.Lock())
        waiting = self._waiting.setdefault(fp, [])
        waiting.append(op)  # shown the running download's progress while it waits
        try:
            async with lock:  # a second pull of the same image waits for the first
                waiting.remove(op)
                local = await self.ctx.images.get(key(req.project, fp))
                if local is not None:
                    return await self._reuse(req, local[0], op)
                other = next((r for r in self.ctx.images.cached()
                              if r["fingerprint"] == fp), None)
                if other is not None:
                    return await self._share(req, remote, other, op)
                return await self._download(req, remote, op)
        finally:
            if op in waiting:
                waiting.remove(op)
            if not lock.locked() and self._locks.get(fp) is lock:
                self._locks.pop(fp, None)
                self._waiting.pop(fp, None)

    def _fields(self, req: PullRequest, remote: Remote) -> dict[str, Any]:
        return {"cached": req.cached, "auto_update": req.auto_update,
                "update_source": {k: remote.update_source.get(k, "") for k in
                                  ("alias", "certificate", "protocol", "server",
                                   "image_type")}}

    async def _download(self, req: PullRequest, remote: Remote, op: OperationHandle
                        ) -> dict[str, Any]:
        fetcher = protocols.fetcher(req.source.protocol)
        tmp_root = self.ctx.tmp_dir
        tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=tmp_root))
        rates: dict[str, Rate] = {}

        async def progress(part: str, done: int, total: int) -> None:
            if 0 < done < total:
                faults.point("pull:downloading")
            text = rates.setdefault(part, Rate(part)).text(done, total)
            if text is not None:
                for each in [op, *self._waiting.get(remote.fingerprint, [])]:
                    await each.set_metadata(download_progress=text)

        try:
            fetched = await _cancel_promptly(fetcher.download(req.source, remote, tmp,
                                                              progress))
            faults.point("pull:after_download")
            # from here objects may be written before the record: say which, for recover()
            # (named after the server's fingerprint: the import refuses any other)
            (tmp / JOURNAL).write_text(json.dumps({"fingerprint": remote.fingerprint.lower(),
                                                   "project": req.project}))
            props = {**remote.properties, **req.properties}
            return await imports.store(self.ctx, self.aliases, imports.Incoming(
                project=req.project, meta=fetched.meta, rootfs=fetched.rootfs,
                rootfs_part=fetched.rootfs_part,
                filename=fetched.filename or remote.private.get("filename", ""),
                public=req.public, properties=props, profiles=req.profiles,
                aliases=req.aliases, requestor=req.requestor, fingerprint=remote.fingerprint,
                fingerprint_is_content=fetched.fingerprint_is_content,
                record=self._fields(req, remote)), op)
        except BadRequest as e:
            if e.message.startswith("Fingerprints do not match"):
                raise BadRequest(f"The image downloaded from {req.source.server} is not the "
                                 f"one its index announces: {e.message}") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def _reuse(self, req: PullRequest, rec: dict[str, Any], op: OperationHandle
                     ) -> dict[str, Any]:
        """The image is in the project already: LXD uses it as it is for an instance; an
        explicit copy (not cached) makes a cached image a kept one and applies its
        auto_update, public and properties. The request's aliases are added."""
        fp = rec["fingerprint"]
        changes: dict[str, Any] = {}
        if not req.cached:
            if rec.get("cached"):
                changes["cached"] = False
            if req.auto_update and not rec.get("auto_update"):
                changes["auto_update"] = True
            if req.public and not rec.get("public"):
                changes["public"] = True
            if req.properties:
                changes["properties"] = {**rec.get("properties", {}), **req.properties}
        if changes:
            await mutate(self.ctx.images, key(req.project, fp), lambda r: {**r, **changes},
                         "Image")
        for alias in req.aliases:
            held = await self.ctx.aliases.get(key(req.project, alias["name"]))
            if held is None:
                await self.aliases.create(req.project, {**alias, "target": fp}, req.requestor)
            elif held[0].get("target") != fp:
                raise Conflict(f"Alias already exists: {alias['name']}")
        await op.set_metadata(fingerprint=fp, size=str(rec["size"]))
        return {"fingerprint": fp, "size": str(rec["size"])}

    async def _share(self, req: PullRequest, remote: Remote, other: dict[str, Any],
                     op: OperationHandle) -> dict[str, Any]:
        """Another project holds the image: a record of its own here, the files shared
        (LXD does the same), nothing downloaded."""
        fp = other["fingerprint"]
        for alias in req.aliases:
            if await self.ctx.aliases.get(key(req.project, alias["name"])) is not None:
                raise Conflict(f"Alias already exists: {alias['name']}")
        await imports.check_profiles(self.ctx, req.project, req.profiles)
        rec = {**other, **self._fields(req, remote), "project": req.project,
               "public": req.public, "last_used_at": records.NEVER,
               "uploaded_at": lxd_time(),
               "properties": {**other.get("properties", {}), **req.properties},
               "profiles": list(req.profiles) if req.profiles is not None else ["default"]}
        try:
            await self.ctx.images.create(key(req.project, fp), rec, "Image")
        except Conflict:
            raise Conflict("Image with same fingerprint already exists") from None
        for alias in req.aliases:
            await self.aliases.create(req.project, {**alias, "target": fp}, req.requestor)
        await self.ctx.events.lifecycle("image-created", imports.records_url(fp, req.project),
                                        project=req.project, context={"type": rec["type"]},
                                        requestor=req.requestor)
        await op.set_metadata(fingerprint=fp, size=str(rec["size"]))
        return {"fingerprint": fp, "size": str(rec["size"])}


def request_from_body(body: dict[str, Any], project: str, requestor: Any,
                      request_id: str) -> PullRequest:
    """``POST /1.0/images`` with ``source.mode: pull`` as a ``PullRequest`` (``lxc image
    copy``: cached false, as LXD)."""
    source = dict(body.get("source") or {})
    try:
        src = PullSource(project=project, server=source.get("server") or "",
                         protocol=source.get("protocol") or "lxd",
                         alias=source.get("alias") or None,
                         fingerprint=source.get("fingerprint") or None,
                         certificate=source.get("certificate") or "",
                         secret=source.get("secret") or "",
                         image_type=source.get("image_type") or "",
                         credentials=source.get("credentials") or "")
        aliases = body.get("aliases") or []
        if not isinstance(body.get("properties") or {}, dict):
            raise BadRequest("Invalid properties: expected an object of strings")
        if not isinstance(aliases, list) or not all(isinstance(a, dict) for a in aliases):
            raise BadRequest("Invalid aliases: expected a list of {\"name\", \"description\"}")
        return PullRequest(project=project, requestor=requestor, source=src,
                           request_id=request_id, cached=False,
                           auto_update=bool(body.get("auto_update")),
                           public=bool(body.get("public")),
                           aliases=[{"name": str(a.get("name", "")),
                                     "description": str(a.get("description", ""))}
                                    for a in aliases],
                           profiles=body.get("profiles"),
                           properties={str(k): str(v) for k, v in
                                       (body.get("properties") or {}).items()})
    except ValidationError as e:
        raise BadRequest(f"Invalid image source: {e.errors()[0].get('msg')}") from None


__all__ = ["Pulls", "recover", "request_from_body"]


T = TypeVar("T")

# Seconds a cancelled download may take to let go of its connection before the operation
# ends Cancelled anyway (it goes on closing in the background).
CANCEL_GRACE = 2.0


async def _cancel_promptly(download: Awaitable[T]) -> T:
    """Await ``download``; cancelled, end within ``CANCEL_GRACE`` seconds.

    Closing an HTTPS response cut short waits for the server's TLS close_notify: a server
    that stalls mid-file (the reason a user cancels) held ``lxc operation delete`` and the
    operation until it timed out, and the download then finished as a Success."""
    task = asyncio.ensure_future(download)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, always
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
        raise

