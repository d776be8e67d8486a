"""Downloading from image servers over HTTPS: small documents and checked files.

Why one module: every protocol (simplestreams, lxd, oci) reaches a server the same way, and
the same things must hold for each: the server's certificate pinned when the caller gives
one (LXD's ``source.certificate``; else the system CAs), a file streamed to disk (never held
in memory), its size and sha256 checked before anyone uses it, progress reported as it
comes, and an error a person can act on (unreachable: 503; refused certificate, bad
checksum, wrong size: 400; not there: 404).
"""

from __future__ import annotations

import errno
import hashlib
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from shared.api import byte_size
from shared.errors import BadRequest, CorralError, NotFound, Unavailable

# progress(done_bytes, total_bytes); total 0 when the size is unknown.
Progress = Callable[[int, int], Awaitable[None]]

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0  # between two chunks: a stalled server is an error, a slow one is not
MAX_DOCUMENT = 64 * 1024 * 1024  # images.json of images.linuxcontainers.org is ~10 MB
USER_AGENT = "Corral (LXD-compatible)"
_CHUNK = 64 * 1024
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)

if TYPE_CHECKING:
    import httpx


def ssl_context(certificate: str = "") -> ssl.SSLContext:
    """Trust exactly ``certificate`` (PEM) when given, else the system CAs.

    A pinned certificate is the trust anchor itself (partial chains allowed, so a
    self-signed leaf works); the host name is not checked then, as LXD: the pin is
    stronger than a name."""
    if not certificate:
        return ssl.create_default_context()
    try:
        ctx = ssl.create_default_context(cadata=certificate)
    except ssl.SSLError as e:
        raise BadRequest(f"Invalid source certificate: not a PEM certificate ({e})") from None
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def client(certificate: str = "", *, timeout: float = READ_TIMEOUT) -> httpx.AsyncClient:
    # httpx is imported at the first download, not when the image service starts: many
    # image services never pull from a server (~1 MiB and 23 modules otherwise)
    import httpx

    return httpx.AsyncClient(verify=ssl_context(certificate), follow_redirects=True,
                             headers={"User-Agent": USER_AGENT},
                             timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))


def explain(exc: BaseException, url: str, certificate: str) -> CorralError:
    """The transport error ``exc`` as an error that says what to do about it."""
    if isinstance(exc, CorralError):
        return exc
    text = str(exc) or type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            if certificate:
                return BadRequest(f"TLS failure talking to {url}: the server's certificate "
                                  f"is not the pinned one ({cause.verify_message or text}); "
                                  "check source.certificate (lxc: "
                                  "$LXD_CONF/servercerts/<remote>.crt)")
            return BadRequest(f"TLS failure talking to {url}: "
                              f"{cause.verify_message or text}; if the server uses a "
                              "self-signed certificate, pin it (source.certificate)")
        if isinstance(cause, ssl.SSLError):
            return BadRequest(f"TLS failure talking to {url}: {cause}")
        cause = cause.__cause__ or cause.__context__
    import httpx  # already loaded by client(), whose errors these are

    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Unavailable(f"Image server {url} is unreachable: {text}")
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"Image server {url} stopped answering: {text}")
    if isinstance(exc, httpx.HTTPError):
        return Unavailable(f"Download from {url} failed: {text}")
    if isinstance(exc, OSError):
        return Unavailable(f"Download from {url} failed: {exc}")
    return BadRequest(f"Download from {url} failed: {text}")


def _status(r: httpx.Response, url: str) -> None:
    if r.status_code == 200:
        return
    if r.status_code == 404:
        raise NotFound(f"Not found on the image server: {url} (404)")
    if r.status_code in (401, 403):
        raise BadRequest(f"The image server refused {url}: {r.status_code} "
                         f"{r.reason_phrase} (a private image needs a secret)")
    if r.status_code >= 500:
        raise Unavailable(f"The image server failed on {url}: {r.status_code} "
                          f"{r.reason_phrase}")
    raise BadRequest(f"Cannot fetch {url}: {r.status_code} {r.reason_phrase}")


async def fetch_bytes(url: str, certificate: str = "", *, limit: int = MAX_DOCUMENT,
                      params: dict[str, str] | None = None) -> tuple[bytes, httpx.Headers]:
    """A small document (JSON index, image info), at most ``limit`` bytes."""
    try:
        async with client(certificate) as c, c.stream("GET", url, params=params) as r:
            _status(r, url)
            data = bytearray()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise BadRequest(f"{url} is larger than {limit} bytes: not an index")
            return bytes(data), r.headers
    except BaseException as e:
        if not isinstance(e, Exception):
            raise
        raise explain(e, url, certificate) from e


async def fetch_file(url: str, dest: Path, *, sha256: str | None, size: int | None,
                     certificate: str = "", progress: Progress | None = None,
                     params: dict[str, str] | None = None) -> tuple[str, int]:
    """Stream ``url`` into ``dest`` (created 0600), checking size and sha256 when given.

    Returns (sha256, size). A mismatch removes ``dest`` and is a 400 naming the file, what
    was expected and what came. ``dest``'s directory must be private (the caller's temp
    dir): a file is never read by anyone before it is checked."""
    h = hashlib.sha256()
    done = 0
    total = size or 0
    try:
        async with client(certificate) as c, c.stream("GET", url, params=params) as r:
            _status(r, url)
            if not total:
                total = int(r.headers.get("Content-Length") or 0)
            with open(dest, "xb", buffering=0) as out:
                dest.chmod(0o600)
                if progress:
                    await progress(0, total)
                async for chunk in r.aiter_bytes(_CHUNK):
                    done += len(chunk)
                    if size is not None and done > size:
                        raise BadRequest(f"Size mismatch for {url}: the server sent more than "
                                         f"the {size} bytes the index announces")
                    out.write(chunk)
                    h.update(chunk)
                    if progress:
                        await progress(done, total)
        if size is not None and done != size:
            raise BadRequest(f"Size mismatch for {url}: got {done} bytes, the index "
                             f"announces {size}")
        got = h.hexdigest()
        if sha256 and got != sha256.lower():
            raise BadRequest(f"Checksum mismatch for {url}: got sha256 {got}, expected "
                             f"{sha256.lower()}; the file on the server is damaged or was "
                             "replaced")
        return got, done
    except BaseException as e:
        dest.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) \
                and e.errno in _DISK_ERRORS:
            raise Unavailable(f"Cannot write the download of {url} to {dest.parent}: "
                              f"{e.strerror} (free some space there and try again)") from e
        raise explain(e, url, certificate) from e


class Rate:
    """LXD's progress text for one file: ``<part>: 42% (3.10MB/s)``, emitted when the
    percentage grows (at most every 0.5 s while it does)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.start = time.monotonic()
        self.last_pct = -1
        self.last_at = 0.0

    def text(self, done: int, total: int) -> str | None:
        now = time.monotonic()
        pct = min(100, done * 100 // total) if total else 0
        if total and (pct == self.last_pct or (now - self.last_at < 0.5 and pct < 100)):
            return None
        if not total and now - self.last_at < 1.0:
            return None
        self.last_pct, self.last_at = pct, now
        speed = int(done / max(now - self.start, 1e-3))
        if total:
            return f"{self.part}: {pct}% ({byte_size(speed)}/s)"
        return f"{self.part}: {byte_size(done)} ({byte_size(speed)}/s)"


def join(server: str, path: str) -> str:
    """``server`` (maybe with a trailing slash or a path) joined with ``path``."""
    return server.rstrip("/") + "/" + path.lstrip("/")


__all__ = ["Rate", "byte_size", "client", "explain", "fetch_bytes", "fetch_file", "join",
           "ssl_context"]
