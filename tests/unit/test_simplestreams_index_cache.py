"""The simplestreams fetcher's index cache (``services/image/fetch_simplestreams.py``):
when a cached index may answer, and when the server must be asked again. The server is a
stub ``catalog`` (pure logic: what is fetched when); the real server is in
tests/test_image_pull.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from services.image import fetch_simplestreams as fs
from shared.errors import NotFound
from shared.messages.image import PullSource


class Server:
    """Counts reads of the index; ``names`` are the aliases it knows now."""

    def __init__(self) -> None:
        self.reads = 0
        self.names = {"busybox/1.36": "a" * 64}

    async def catalog(self, server: str, certificate: str = "") -> object:
        self.reads += 1
        names = dict(self.names)

        def find(*, alias=None, fingerprint=None, image_type=""):
            fp = names.get(alias or "") or next(
                (f for f in names.values() if fingerprint and f.startswith(fingerprint)), None)
            if fp is None:
                raise NotFound("Image not found")
            return SimpleNamespace(fingerprint=fp, type="container", architecture="x86_64",
                                   size=1, properties={}, files=[], filename="",
                                   created_at=datetime.now(timezone.utc))

        return SimpleNamespace(find=find)


@pytest.fixture
def server(monkeypatch):
    srv = Server()
    monkeypatch.setattr(fs, "catalog", srv.catalog)
    return srv


def src(alias: str = "busybox/1.36", cert: str = "PEM") -> PullSource:
    return PullSource(server="https://img.example", protocol="simplestreams", alias=alias,
                      certificate=cert)


def resolve(f: fs.Fetcher, source: PullSource, **kw) -> str:
    return asyncio.run(f.resolve(source, "container", **kw)).fingerprint


def test_default_reads_the_server_every_time(server):
    f = fs.Fetcher()
    resolve(f, src())
    resolve(f, src())
    assert server.reads == 2


def test_cached_within_ttl_then_read_again(server, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(fs, "time", SimpleNamespace(monotonic=lambda: now[0]))
    f = fs.Fetcher()
    resolve(f, src(), cached=True)
    resolve(f, src(), cached=True)
    assert server.reads == 1
    now[0] += fs.INDEX_TTL + 1
    resolve(f, src(), cached=True)
    assert server.reads == 2


def test_keyed_by_server_and_certificate(server):
    f = fs.Fetcher()
    resolve(f, src(cert="A"), cached=True)
    resolve(f, src(cert="B"), cached=True)  # another pinned certificate: its own read
    assert server.reads == 2
    resolve(f, src(cert="A"), cached=True)
    assert server.reads == 2


def test_a_name_the_cache_lacks_is_asked_again(server):
    f = fs.Fetcher()
    resolve(f, src(), cached=True)
    server.names["busybox/1.37"] = "b" * 64
    assert resolve(f, src("busybox/1.37"), cached=True) == "b" * 64
    assert server.reads == 2
    with pytest.raises(NotFound):
        resolve(f, src("nope"), cached=True)


def test_a_fresh_read_refreshes_the_cache(server):
    f = fs.Fetcher()
    resolve(f, src(), cached=True)
    server.names["busybox/1.36"] = "c" * 64  # a newer version: a refresh reads it...
    assert resolve(f, src()) == "c" * 64
    assert resolve(f, src(), cached=True) == "c" * 64  # ...and later launches see it
    assert server.reads == 2


def test_cached_index_context_and_its_accept(server):
    f = fs.Fetcher()
    resolve(f, src())
    with fs.cached_index():
        resolve(f, src())
    assert server.reads == 1
    with fs.cached_index(lambda remote: remote.fingerprint != "a" * 64):
        resolve(f, src())  # the caller refuses the cached answer: the server is asked
    assert server.reads == 2
