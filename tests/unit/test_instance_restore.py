"""Reading ``restore`` of ``PUT /1.0/instances/<name>`` as LXD does, and its 404."""

from __future__ import annotations

import asyncio

import pytest

from services.instance import restore
from shared.errors import BadRequest, NotFound


@pytest.mark.parametrize("snap, full", [("snap0", "c1/snap0"), ("c1/snap0", "c1/snap0"),
                                        ("a b", "c1/a b")])
def test_snapshot_name(snap: str, full: str) -> None:
    assert restore.snapshot_name("c1", snap) == full


@pytest.mark.parametrize("snap", ["", "  ", None, 3, "c2/snap0", "c1/", "/snap0", "c1/..",
                                  ".", "a\0b"])
def test_bad_snapshot_names_are_400(snap: object) -> None:
    with pytest.raises(BadRequest):
        restore.snapshot_name("c1", snap)


def test_missing_snapshot_is_404_with_lxds_message() -> None:
    rec = {"name": "c1", "project": "default"}
    with pytest.raises(NotFound, match=r"^Snapshot c1/snap0 does not exist$"):
        asyncio.run(restore.restore(None, rec, {"restore": "snap0"}))  # type: ignore[arg-type]
