"""Unit tests of the concurrency rules: compare-and-set retries with jittered backoff, the
service's bound on requests in flight (503 with a reason), and the image's coalesced
``last_used_at`` stamp. Fakes stand in for the KV store and NATS requests: only the logic
is under test here (tests/test_concurrency.py runs 50 real launches)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shared import codec
from shared.bus import Bus
from shared.config import load_config
from shared.errors import Conflict, CorralError
from shared.models import Message, Reply
from shared.service import Service, endpoint
from shared.state import backoff_delay, mutate


class FakeStore:
    """A KV with revisions whose ``update`` yields first, so concurrent writers really race."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value, self.rev, self.writes = dict(value), 1, 0

    async def require(self, key: str, what: str) -> tuple[dict[str, Any], int]:
        return dict(self.value), self.rev

    async def get(self, key: str) -> tuple[dict[str, Any], int] | None:
        return dict(self.value), self.rev

    async def update(self, key: str, value: dict[str, Any], revision: int) -> int:
        await asyncio.sleep(0.001)  # a round trip: others read the same revision meanwhile
        if revision != self.rev:
            raise Conflict(f"{key} was changed concurrently, retry")
        self.value, self.rev, self.writes = dict(value), self.rev + 1, self.writes + 1
        return self.rev


def test_backoff_grows_is_jittered_and_capped():
    for attempt in range(12):
        bound = min(0.4, 0.005 * 2 ** attempt)
        samples = {backoff_delay(attempt) for _ in range(50)}
        assert all(0 <= d <= bound for d in samples)
        assert len(samples) > 40  # random, not a fixed beat
    assert max(backoff_delay(30) for _ in range(200)) <= 0.4


async def test_fifty_racing_mutations_all_land():
    """50 read-modify-writes of one key: every increment lands, none answers 409 (they
    failed after 5 tries without backoff before)."""
    store = FakeStore({"n": 0})
    results = await asyncio.gather(*(mutate(store, "k", lambda r: {**r, "n": r["n"] + 1})
                                     for _ in range(50)), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert store.value["n"] == 50


async def test_mutate_gives_up_with_409_after_its_attempts():
    class AlwaysLoses(FakeStore):
        async def update(self, key, value, revision):
            raise Conflict("changed")

    with pytest.raises(CorralError) as err:
        await mutate(AlwaysLoses({}), "k", lambda r: r, "Image", attempts=3)
    assert err.value.code == 409 and "try again" in err.value.message


class Slow(Message):
    pass


class SlowService(Service):
    name = "slowpoke"

    def __init__(self, workdir: Path) -> None:
        config = load_config(dir=workdir)  # a dir of its own: no corral.yaml read elsewhere
        super().__init__(config, Bus(config, self.name))  # never connected: handlers only
        self.release = asyncio.Event()

    @endpoint("wait", Slow)
    async def wait(self, _req: Slow) -> Reply:
        await self.release.wait()
        return Reply(metadata="done")


class FakeRequest:
    def __init__(self) -> None:
        self.data, self.headers = codec.encode({}), {}
        self.reply: Any = None
        self.error: tuple[str, str] | None = None

    async def respond(self, data: bytes) -> None:
        self.reply = codec.decode(data)

    async def respond_error(self, code: str, description: str) -> None:
        self.error = (code, description)


async def test_a_full_service_answers_503_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "corral.yaml"))  # none: defaults
    svc = SlowService(tmp_path)
    svc.max_in_flight = 2
    spec = next(s for s in svc.endpoints() if s.verb == "wait")
    handle = svc._wrap(spec)
    reqs = [FakeRequest() for _ in range(3)]
    for r in reqs:
        await handle(r)
    await asyncio.sleep(0.01)
    assert reqs[2].error is not None
    code, message = reqs[2].error
    assert code == "503"
    assert "slowpoke service is busy: 2 requests in flight" in message
    assert reqs[0].error is None and reqs[1].error is None
    svc.release.set()
    await asyncio.sleep(0.01)
    assert reqs[0].reply and reqs[1].reply
    again = FakeRequest()  # room again once the others answered
    await handle(again)
    await asyncio.sleep(0.01)
    assert again.error is None and again.reply is not None
    figures = svc._figures["wait"]
    assert figures.errors == 1 and figures.in_flight == 0 and figures.completed == 4


async def test_image_last_used_at_stamps_coalesce():
    """50 launches of one image: a couple of KV writes, no 409, the newest time wins."""
    from services.image.images import Images

    class Ctx:
        images = FakeStore({"last_used_at": "0001-01-01T00:00:00Z"})

        class log:  # noqa: N801
            @staticmethod
            def warning(*_a: Any, **_k: Any) -> None:
                raise AssertionError("no stamp may fail")

    logic = Images(Ctx(), aliases=None)  # type: ignore[arg-type]
    times = [f"2026-01-01T00:00:{i:02d}.000000000Z" for i in range(50)]
    await asyncio.gather(*(logic.touch("k", t) for t in times))
    assert Ctx.images.value["last_used_at"] == times[-1]
    assert Ctx.images.writes <= 3


async def test_instance_service_bounds_its_operations(tmp_path, monkeypatch):
    """Creates, state changes and deletes beyond ``max_operations`` are a 503 with a
    reason; the count falls as each ends, and when an operation could not even start."""
    from services.instance.service import InstanceService
    from shared.errors import Unavailable

    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "corral.yaml"))
    config = load_config(dir=tmp_path)
    svc = InstanceService(config, Bus(config, "instance"))
    svc.max_operations = 2
    release = asyncio.Event()

    class FakeOperations:
        fail = False

        async def start(self, description: str, run: Any, **_kw: Any) -> str:
            if self.fail:
                raise Unavailable("bus down")
            asyncio.get_running_loop().create_task(run(None))
            return description

    async def work(_op: Any) -> None:
        await release.wait()

    svc.operations = FakeOperations()  # type: ignore[assignment]
    assert await svc._start_work("one", work) == "one"
    assert await svc._start_work("two", work) == "two"
    with pytest.raises(Unavailable, match="busy: 2 operations running"):
        await svc._start_work("three", work)
    release.set()
    await asyncio.sleep(0.01)
    assert svc._working == 0
    svc.operations.fail = True
    with pytest.raises(Unavailable, match="bus down"):
        await svc._start_work("four", work)
    assert svc._working == 0
