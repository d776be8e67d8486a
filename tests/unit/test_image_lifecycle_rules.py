"""When a cached image expires and when an auto_update image is checked (pure rules of
services/image/lifecycle.py), and what a refresh asks its server again."""

from __future__ import annotations

import pytest

from services.image.lifecycle import CHECKED, cache_expired, pull_source, update_due
from shared.errors import BadRequest
from shared.operations import parse_lxd_time

NOW = parse_lxd_time("2030-01-20T00:00:00Z")
SRC = {"server": "https://127.0.0.1:8443", "protocol": "simplestreams", "alias": "bb",
       "certificate": "PEM", "image_type": "container"}


def rec(**kw):
    return {"fingerprint": "ab" * 32, "type": "container", "cached": True,
            "auto_update": True, "update_source": SRC,
            "uploaded_at": "2030-01-01T00:00:00.000000000Z",
            "last_used_at": "0001-01-01T00:00:00Z", **kw}


def test_cache_expiry_counts_from_last_use_else_upload():
    assert cache_expired(rec(), NOW, 10)  # uploaded 19 days ago, never used
    assert not cache_expired(rec(), NOW, 30)
    assert not cache_expired(rec(last_used_at="2030-01-15T00:00:00Z"), NOW, 10)
    assert cache_expired(rec(last_used_at="2030-01-05T00:00:00Z"), NOW, 10)


def test_only_cached_images_expire_and_zero_means_never():
    assert not cache_expired(rec(cached=False), NOW, 1)
    assert not cache_expired(rec(), NOW, 0)


def test_update_due_after_interval_from_last_check_else_pull_time():
    assert update_due(rec(), NOW, 6)
    assert not update_due(rec(**{CHECKED: "2030-01-19T20:00:00Z"}), NOW, 6)
    assert update_due(rec(**{CHECKED: "2030-01-19T18:00:00Z"}), NOW, 6)
    assert not update_due(rec(), NOW, 0)  # 0 = never
    assert not update_due(rec(auto_update=False), NOW, 6)
    assert not update_due(rec(update_source=None), NOW, 6)


def test_pull_source_of_a_record():
    src = pull_source(rec(project="p1"))
    assert (src.server, src.protocol, src.alias, src.certificate, src.project) == (
        SRC["server"], "simplestreams", "bb", "PEM", "p1")
    with pytest.raises(BadRequest, match="no update source"):
        pull_source(rec(update_source=None))
