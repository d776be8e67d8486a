"""The ``lxd`` fetcher (see ``fetchers.py``): another Corral or an LXD, over its REST API.

As LXD's daemon does (``daemon_images.go`` ImageDownload): without a secret, the name is
tried as an alias (``GET /1.0/images/aliases/<name>``), else taken as a fingerprint
(prefix); ``GET /1.0/images/<fp>`` gives the image (public ones to an untrusted client; a
private one with ``?secret=`` from ``POST /1.0/images/<fp>/secret`` on that server); ``GET
/1.0/images/<fp>/export`` gives the file (unified) or a multipart body (split: parts
``metadata`` and ``rootfs`` / ``rootfs.img``). The server's certificate is pinned when
``source.certificate`` is given.

There is no per-file checksum in this protocol: the import checks that the content hashes
to the fingerprint the server announced (sha256 of the file, or of metadata + rootfs), and
the total size is checked against the image's ``size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared.errors import BadRequest, CorralError, NotFound, Unavailable
from shared.image import download
from shared.messages.image import PullSource

from .fetchers import Fetched, Progress, Remote

_CHUNK = 64 * 1024


async def _get(server: str, path: str, source: PullSource, params: dict[str, str]
               ) -> dict[str, Any]:
    url = download.join(server, path)
    data, _h = await download.fetch_bytes(url, source.certificate, params=params or None,
                                          limit=8 * 1024 * 1024)
    doc = download_json(data, url)
    meta = doc.get("metadata")
    if doc.get("type") == "error" or not isinstance(meta, dict):
        raise BadRequest(f"{url} answered no image: {doc.get('error') or 'not LXD JSON'}")
    return meta


def download_json(data: bytes, url: str) -> dict[str, Any]:
    from shared.image.simplestreams import loads

    return loads(data, url)


def _params(source: PullSource) -> dict[str, str]:
    out = {"secret": source.secret} if source.secret else {}
    return out


class Fetcher:
    async def resolve(self, source: PullSource, instance_type: str) -> Remote:
        server, name = source.server, source.alias or source.fingerprint or ""
        kind = source.image_type or ""
        fp = name
        if not source.secret:  # LXD resolves aliases of public images only
            try:
                alias = await _get(server, f"/1.0/images/aliases/{quote(name, safe='')}",
                                   source, {})
                if not kind or alias.get("type", "container") == kind:
                    fp = str(alias.get("target") or name)
            except NotFound:
                pass
        try:
            info = await _get(server, f"/1.0/images/{quote(fp, safe='')}", source,
                              _params(source))
        except NotFound:
            raise NotFound(f"Image {name!r} not found on {server}" + (
                " (or its secret is not valid)" if source.secret else "")) from None
        full = str(info.get("fingerprint", "")).lower()
        if len(full) != 64:
            raise BadRequest(f"{server} answered an image without a fingerprint")
        img_type = info.get("type") or "container"
        if kind and img_type != kind:
            raise BadRequest(f"Image {name!r} on {server} is a {img_type} image, not "
                             f"{kind}")
        return Remote(
            fingerprint=full, type=img_type, architecture=str(info.get("architecture", "")),
            size=int(info.get("size") or 0),
            properties={str(k): str(v) for k, v in (info.get("properties") or {}).items()},
            # a secret is used once: a refresh asks by fingerprint (as LXD)
            update_source={"alias": full if source.secret else name,
                           "certificate": source.certificate, "protocol": "lxd",
                           "server": server, "image_type": source.image_type},
            private={"filename": info.get("filename", "")})

    async def download(self, source: PullSource, remote: Remote, workdir: Path,
                       progress: Progress) -> Fetched:
        import aiohttp  # here: ~8 MiB the image service carries only once it pulls from LXD

        url = download.join(source.server, f"/1.0/images/{remote.fingerprint}/export")
        try:
            return await self._export(url, source, remote, workdir, progress)
        except CorralError:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise download.explain(e.certificate_error, url, source.certificate) from e
        except aiohttp.ClientSSLError as e:
            raise BadRequest(f"TLS failure talking to {url}: {e}") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise Unavailable(f"Download from {url} failed: {e or type(e).__name__}") from e

    async def _export(self, url: str, source: PullSource, remote: Remote, workdir: Path,
                      progress: Progress) -> Fetched:
        import aiohttp

        ctx = download.ssl_context(source.certificate)
        timeout = aiohttp.ClientTimeout(sock_connect=download.CONNECT_TIMEOUT,
                                        sock_read=download.READ_TIMEOUT)
        done = 0
        total = remote.size

        async def copy(read: Any, dest: Path, label: str) -> None:
            nonlocal done
            with open(dest, "xb", buffering=0) as out:
                dest.chmod(0o600)
                while chunk := await read(_CHUNK):
                    done += len(chunk)
                    if total and done > total:
                        raise BadRequest(f"Size mismatch for {url}: the server sent more "
                                         f"than the image's {total} bytes")
                    out.write(chunk)
                    await progress(label, done, total)

        async with aiohttp.ClientSession(timeout=timeout, headers={
                "User-Agent": download.USER_AGENT}) as s, \
                s.get(url, params=_params(source) or None, ssl=ctx) as resp:
            if resp.status == 404:
                raise NotFound(f"Not found on the image server: {url} (404)")
            if resp.status != 200:
                raise (Unavailable if resp.status >= 500 else BadRequest)(
                    f"Cannot fetch {url}: {resp.status} {resp.reason}")
            meta, rootfs, part, filename = workdir / "meta", None, None, ""
            if resp.content_type == "multipart/form-data":
                reader = aiohttp.MultipartReader.from_response(resp)
                while (p := await reader.next()) is not None:
                    if not isinstance(p, aiohttp.BodyPartReader):
                        raise BadRequest(f"{url}: unexpected nested multipart body")
                    if p.name == "metadata":
                        await copy(p.read_chunk, meta, "metadata")
                    elif p.name in ("rootfs", "rootfs.img") and rootfs is None:
                        rootfs, part = workdir / "rootfs", p.name
                        filename = p.filename or ""
                        await copy(p.read_chunk, rootfs, "rootfs")
                    else:
                        raise BadRequest(f"{url}: unexpected part {p.name!r} in the export")
                if not meta.exists() or rootfs is None:
                    raise BadRequest(f"{url}: the split export lacks its metadata or rootfs")
            else:
                await copy(resp.content.read, meta, "metadata")
                filename = resp.content_disposition.filename if \
                    resp.content_disposition and resp.content_disposition.filename else ""
        if total and done != total:
            raise BadRequest(f"Size mismatch for {url}: got {done} bytes, the image's size "
                             f"is {total}")
        return Fetched(meta=meta, rootfs=rootfs, rootfs_part=part,
                       filename=filename or remote.private.get("filename", ""))


FETCHER = Fetcher()
