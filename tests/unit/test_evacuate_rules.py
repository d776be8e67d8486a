"""Evacuation's pure rules: an evacuated member's status and placement's skip of it
(services/gateway/placement.py ``eligible``), and which mode an instance is evacuated
with (services/gateway/evacuate.py)."""

from __future__ import annotations

import time

import pytest

from services.gateway.evacuate import check_mode, mode_of, shutdown_timeout
from services.gateway.placement import Candidate, eligible
from shared.cluster import Member, status_of
from shared.errors import BadRequest


def test_evacuated_shows_before_offline_and_placement_skips_it():
    now = time.time()
    up = Member(name="node1", heartbeat=now)
    away = Member(name="node2", heartbeat=now, evacuated=True)
    stale = Member(name="node3", heartbeat=now - 3600, evacuated=True)
    assert status_of(up, now) == ("Online", "Fully operational")
    assert status_of(away, now) == ("Evacuated", "Unavailable due to maintenance")
    assert status_of(stale, now)[0] == "Evacuated"  # LXD: the state wins over the age
    assert [m.name for m in eligible([Candidate(up), Candidate(away)], None, now)] == [
        "node1"]
    assert eligible([Candidate(away, groups=("g",))], "g", now) == []


def test_the_request_mode_wins_over_the_instance_config():
    rec = {"name": "c1", "expanded_config": {"cluster.evacuate": "migrate"}}
    assert mode_of(rec, "") == "migrate"
    assert mode_of(rec, "auto") == "migrate"
    assert mode_of(rec, "stop") == "stop"
    assert mode_of({"name": "c1"}, "") == "auto"


def test_shutdown_timeout_and_modes():
    assert shutdown_timeout({"expanded_config": {}}) == 30  # LXD's default
    assert shutdown_timeout({"expanded_config": {"boot.host_shutdown_timeout": "3"}}) == 3
    assert shutdown_timeout({"expanded_config": {"boot.host_shutdown_timeout": "x"}}) == 30
    assert check_mode(None) == "" and check_mode("live-migrate") == "live-migrate"
    with pytest.raises(BadRequest):
        check_mode("teleport")
