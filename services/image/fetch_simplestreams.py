"""The ``simplestreams`` fetcher (see ``fetchers.py``): images.linuxcontainers.org's format,
and Corral's own served tree.

``resolve`` reads ``streams/v1/index.json`` and the products files it lists, and picks the
image as LXD does (``shared/image/simplestreams.py``): by fingerprint (prefix), else by
alias for this host's architecture and the type asked. LXD's 5.0 client sends the alias in
``source.fingerprint`` for ``lxc image copy``, so a fingerprint that matches nothing is
tried as an alias. ``download`` fetches the metadata and root files the index names, each
checked against its sha256 and size (``shared/image/download.py``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shared.errors import NotFound
from shared.image import download
from shared.image import simplestreams as ss
from shared.image.format import normalize_architecture
from shared.messages.image import PullSource

from .fetchers import Fetched, Progress, Remote

LOCAL_ARCH = normalize_architecture(os.uname().machine)


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


class Fetcher:
    async def resolve(self, source: PullSource, instance_type: str) -> Remote:
        cat = await catalog(source.server, source.certificate)
        kind = source.image_type or instance_type or ""
        name = source.alias or source.fingerprint or ""
        try:
            img = cat.find(alias=source.alias, fingerprint=source.fingerprint,
                           image_type=kind)
        except NotFound:
            if not source.fingerprint or source.alias:
                raise NotFound(f"Image {name!r} not found on {source.server}"
                               + (f" (for {kind} instances)" if kind else "")) from None
            try:  # lxc image copy x:alias sends the alias as the fingerprint
                img = cat.find(alias=source.fingerprint, image_type=kind)
            except NotFound:
                raise NotFound(f"Image {name!r} not found on {source.server}"
                               + (f" (for {kind} instances)" if kind else "")) from None
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
