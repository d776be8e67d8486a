"""Pure logic of the storage copies and snapshots modules (no disk, no bus)."""

from __future__ import annotations

import pytest

from services.storage.copies import _carried
from services.storage.snapshots import check_snapshot_name
from shared.errors import BadRequest


def test_a_copy_record_keeps_what_the_source_record_says():
    src = {"description": "d", "config": {"size": "1GiB"}, "content_type": "block",
           "source_fingerprint": "ab" * 32, "overlay": True, "request_id": "other",
           "created_at": "old", "name": "src"}
    same = _carried(src, same_pool=True)
    assert same == {"description": "d", "config": {"size": "1GiB"}, "content_type": "block",
                    "source_fingerprint": "ab" * 32, "overlay": True}
    # in another pool the VM overlay is flattened: the image no longer backs it
    assert _carried(src, same_pool=False)["overlay"] is False
    assert _carried(None, same_pool=True) == {}
    assert _carried({"name": "x"}, same_pool=True) == {}


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "with space", "-flag", "x" * 65,
                                  "tab\there"])
def test_bad_snapshot_names(name):
    with pytest.raises(BadRequest):
        check_snapshot_name(name)


@pytest.mark.parametrize("name", ["snap0", "before-upgrade", "2024.01.01", "a_b", "ünïcode"])
def test_good_snapshot_names(name):
    assert check_snapshot_name(name) == name
