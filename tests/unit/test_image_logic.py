"""Unit tests of the image service's logic (images, aliases) over a fake ``ImageContext``.

Why possible now: the logic takes the narrow context (stores, bus, events) instead of the
``ImageService``, so in-memory stores and a recording bus stand in for NATS here. The real
service runs the same code in tests/test_image_service.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.image.aliases import Aliases
from services.image.context import ImageContext
from services.image.images import Images
from shared.errors import BadRequest, Conflict, NotFound, Unavailable
from shared.messages.image import ResolveRequest
from shared.state import key

FP_A, FP_B = "a" * 64, "ab" + "c" * 62


class FakeStore:
    """The KV calls the image logic makes, in memory, with revisions."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[dict[str, Any], int]] = {}

    def cached(self) -> list[dict[str, Any]]:
        return [v for v, _ in self.data.values()]

    async def get(self, k: str):
        return self.data.get(k)

    async def require(self, k: str, what: str = "Entry"):
        if k not in self.data:
            raise NotFound(f"{what} not found")
        return self.data[k]

    async def create(self, k: str, value: dict[str, Any], what: str = "Entry") -> int:
        if k in self.data:
            raise Conflict(f"{what} exists")
        self.data[k] = (value, 1)
        return 1

    async def update(self, k: str, value: dict[str, Any], rev: int) -> int:
        self.data[k] = (value, rev + 1)
        return rev + 1

    async def delete(self, k: str) -> None:
        self.data.pop(k, None)


class FakeEvents:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def lifecycle(self, action: str, source: str, **_kw: Any) -> None:
        self.seen.append((action, source))


class FakeBus:
    """Records requests; ``down`` names services that do not answer."""

    def __init__(self, down: tuple[str, ...] = ()) -> None:
        self.down, self.asked = down, []

    async def request(self, service: str, verb: str, msg: Any, **_kw: Any) -> Any:
        self.asked.append((service, verb))
        if service in self.down:
            raise Unavailable(f"{service} service is not running")
        return {}


def _image(fp: str, project: str = "default", kind: str = "container") -> dict[str, Any]:
    return {"fingerprint": fp, "type": kind, "project": project, "public": False,
            "auto_update": False, "properties": {}, "last_used_at": "0001-01-01T00:00:00Z",
            "_blob": {"meta": f"{fp}.meta", "rootfs": None}}


def _ctx(bus: FakeBus | None = None) -> ImageContext:
    images = FakeStore()
    for rec in (_image(FP_A), _image(FP_B, kind="virtual-machine"), _image(FP_A, "other")):
        images.data[key(rec["project"], rec["fingerprint"])] = (rec, 1)
    return ImageContext(images=images, aliases=FakeStore(), bus=bus or FakeBus(),  # type: ignore[arg-type]
                        events=FakeEvents(), log=None, node="n1",  # type: ignore[arg-type]
                        tmp_dir=Path("/nonexistent"))


def test_blobs_in_use_counts_other_projects_only() -> None:
    ctx = _ctx()
    assert ctx.blobs_in_use(FP_A) and ctx.blobs_in_use(FP_A, but="default")
    assert not ctx.blobs_in_use(FP_B, but="default") and not ctx.blobs_in_use("f" * 64)


async def test_alias_targets_full_fingerprint_and_resolves() -> None:
    ctx = _ctx()
    aliases, images = Aliases(ctx), Images(ctx, Aliases(ctx))
    await aliases.create("default", {"name": "vm", "target": "ab"}, None)
    assert ctx.aliases.cached()[0]["target"] == FP_B  # the prefix became the fingerprint
    assert ("image-alias-created", "/1.0/images/aliases/vm") in ctx.events.seen  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="already exists"):
        await aliases.create("default", {"name": "vm", "target": FP_A}, None)
    with pytest.raises(BadRequest, match="More than one image"):
        await aliases.create("default", {"name": "x", "target": "a"}, None)
    got = await images.resolve(ResolveRequest(project="default", alias="vm",
                                              instance_type="virtual-machine"))
    assert got["fingerprint"] == FP_B and got["aliases"] == [{"name": "vm", "description": ""}]
    with pytest.raises(BadRequest, match="virtual-machine image"):
        await images.resolve(ResolveRequest(project="default", alias="vm",
                                            instance_type="container"))


async def test_delete_asks_storage_first_and_keeps_everything_when_it_is_down() -> None:
    bus = FakeBus(down=("storage",))
    ctx = _ctx(bus)
    images = Images(ctx, Aliases(ctx))
    await Aliases(ctx).create("default", {"name": "vm", "target": FP_B}, None)
    with pytest.raises(Unavailable, match="nothing was removed"):
        await images.delete("default", FP_B, None)
    assert bus.asked == [("storage", "image_volume_delete")]
    assert await ctx.images.get(key("default", FP_B)) is not None
    assert await ctx.aliases.get(key("default", "vm")) is not None


async def test_delete_of_a_shared_image_leaves_volumes_and_files() -> None:
    """Another project holds the same fingerprint: only this project's record and aliases go."""
    bus = FakeBus(down=("storage",))  # would fail if asked
    ctx = _ctx(bus)
    await Aliases(ctx).create("default", {"name": "a", "target": FP_A}, None)
    await Images(ctx, Aliases(ctx)).delete("default", FP_A, None)
    assert bus.asked == []
    assert await ctx.images.get(key("default", FP_A)) is None
    assert await ctx.images.get(key("other", FP_A)) is not None
    assert ctx.aliases.cached() == []
    assert ("image-deleted", f"/1.0/images/{FP_A}") in ctx.events.seen  # type: ignore[attr-defined]
