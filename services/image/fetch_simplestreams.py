"""The ``simplestreams`` fetcher (see ``fetchers.py``): images.linuxcontainers.org's format,
and Corral's own served tree.

``resolve`` reads ``streams/v1/index.json`` and the products files it lists, and picks the
image as LXD does (``shared/image/simplestreams.py``): by fingerprint (prefix), else by
alias for this host's architecture and the type asked. LXD's 5.0 client sends the alias in
``source.fingerprint`` for ``lxc image copy``, so a fingerprint that matches nothing is
tried as an alias. ``download`` fetches the metadata and root files the index names, each
checked against its sha256 and size (``shared/image/download.py``).

The parsed index is kept (``IndexCache``, per server URL and pinned certificate) for
``INDEX_TTL`` seconds, as LXD's daemon keeps a simplestreams index for an hour: without it
every ``lxc launch remote:alias`` of a cached image asks the server twice (index.json,
images.json) over a new TLS connection before it can use the local copy. Only callers that
ask for it read the cache (``resolve(..., cached=True)``, or inside ``cached_index()``: the
instance pull does, for answers naming an image that is local already); a refresh (``lxc
image refresh``, the periodic auto update) keeps the default and reads the server, so a
cache never hides a newer version from it. Every read of the server refreshes the cache,
and a fingerprint or alias the cached index does not know is looked up on the server again
before it is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator

from shared.errors import NotFound
from shared.image import download
from shared.image import simplestreams as ss
from shared.image.format import normalize_architecture
from shared.messages.image import PullSource

from .fetchers import Fetched, Progress, Remote

LOCAL_ARCH = normalize_architecture(os.uname().machine)
INDEX_TTL = 3600.0  # seconds; LXD's daemon keeps a simplestreams index for an hour

# None: no cache; else which answers of a cached index the caller takes (others: the server)
Accept = Callable[[Remote], bool]
_USE_CACHE: ContextVar[Accept | None] = ContextVar("simplestreams_index_cache", default=None)


def _any(_remote: Remote) -> bool:
    return True


@contextlib.contextmanager
def cached_index(accept: Accept = _any) -> Iterator[None]:
    """Resolves made inside (this task and the tasks it starts) may answer from a cached
    index when ``accept`` takes the answer (the instance pull: only an image it will not
    download; a download costs far more than the index, and must get what is there now)."""
    token = _USE_CACHE.set(accept)
    try:
        yield
    finally:
        _USE_CACHE.reset(token)


class IndexCache:
    """Parsed catalogs by (server URL, pinned certificate), each good for ``ttl`` seconds.

    Keyed by the certificate too: a catalog read while trusting one certificate must not
    answer a source that pins another (that source must fail its TLS check)."""

    def __init__(self, ttl: float = INDEX_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, ss.Catalog]] = {}

    def get(self, server: str, certificate: str) -> ss.Catalog | None:
        found = self._entries.get((server.rstrip("/"), certificate))
        if found is None or time.monotonic() - found[0] > self.ttl:
            return None
        return found[1]

    def put(self, server: str, certificate: str, cat: ss.Catalog) -> None:
        now = time.monotonic()
        self._entries = {k: v for k, v in self._entries.items() if now - v[0] <= self.ttl}
        self._entries[(server.rstrip("/"), certificate)] = (now, cat)

    def clear(self) -> None:
        self._entries.clear()


async def catalog(server: str, certificate: str = "") -> ss.Catalog:
    """Every image ``server`` offers, LXD's aliases applied."""
    data, _h = await download.fetch_bytes(download.join(server, "streams/v1/index.json"),
                                          certificate)
    paths = ss.product_paths(ss.loads(data, f"{server}/streams/v1/index.json"))
    docs = []
    for path in paths:
        data, _h = await download.fetch_bytes(download.join(server, path), certificate)
        docs.append(ss.loads(data, f"{server}/{path}"))
    return ss.Catalog.from_documents(docs, LOCAL_ARCH)


def _find(cat: ss.Catalog, source: PullSource, kind: str) -> ss.RemoteImage:
    """The image ``source`` names in ``cat``; NotFound (LXD's message) if none."""
    name = source.alias or source.fingerprint or ""
    try:
        return cat.find(alias=source.alias, fingerprint=source.fingerprint, image_type=kind)
    except NotFound:
        if not source.fingerprint or source.alias:
            raise NotFound(f"Image {name!r} not found on {source.server}"
                           + (f" (for {kind} instances)" if kind else "")) from None
        try:  # lxc image copy x:alias sends the alias as the fingerprint
            return cat.find(alias=source.fingerprint, image_type=kind)
        except NotFound:
            raise NotFound(f"Image {name!r} not found on {source.server}"
                           + (f" (for {kind} instances)" if kind else "")) from None


class Fetcher:
    def __init__(self) -> None:
        self.cache = IndexCache()

    async def _catalog(self, source: PullSource) -> ss.Catalog:
        cat = await catalog(source.server, source.certificate)
        self.cache.put(source.server, source.certificate, cat)
        return cat

    async def resolve(self, source: PullSource, instance_type: str, *,
                      cached: bool | None = None) -> Remote:
        """``cached`` (default: as ``cached_index()`` says, else False) lets a catalog
        read within ``INDEX_TTL`` answer; a name it does not know is looked up on the
        server again."""
        kind = source.image_type or instance_type or ""
        accept = _USE_CACHE.get() if cached is None else (_any if cached else None)
        cat = self.cache.get(source.server, source.certificate) if accept else None
        if cat is not None and accept is not None:
            try:
                remote = self._remote(source, _find(cat, source, kind))
                if accept(remote):
                    return remote
            except NotFound:  # maybe added on the server since: ask it
                pass
        return self._remote(source, _find(await self._catalog(source), source, kind))

    def _remote(self, source: PullSource, img: ss.RemoteImage) -> Remote:
        name = source.alias or source.fingerprint or ""
        return Remote(
            fingerprint=img.fingerprint, type=img.type, architecture=img.architecture,
            size=img.size, properties=dict(img.properties),
            update_source={"alias": name, "certificate": source.certificate,
                           "protocol": "simplestreams", "server": source.server,
                           "image_type": source.image_type},
            private={"files": [f.__dict__ for f in img.files], "filename": img.filename,
                     "created_at": img.created_at.isoformat()})

    async def download(self, source: PullSource, remote: Remote, workdir: Path,
                       progress: Progress) -> Fetched:
        files = {f["part"]: ss.RemoteFile(**f) for f in remote.private["files"]}
        paths: dict[str, Path] = {}
        for part, label in (("meta", "metadata"), ("root", "rootfs")):
            f = files.get(part)
            if f is None:
                continue
            dest = workdir / part

            async def tick(done: int, total: int, label: str = label) -> None:
                await progress(label, done, total)

            await download.fetch_file(download.join(source.server, f.path), dest,
                                      sha256=f.sha256, size=f.size,
                                      certificate=source.certificate, progress=tick)
            paths[part] = dest
            await asyncio.sleep(0)
        root = files.get("root")
        return Fetched(meta=paths["meta"], rootfs=paths.get("root"),
                       rootfs_part=("rootfs.img" if remote.type == "virtual-machine"
                                    else "rootfs") if root else None,
                       filename=remote.private.get("filename", ""))


FETCHER = Fetcher()
