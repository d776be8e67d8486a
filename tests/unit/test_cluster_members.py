"""shared/cluster.py's liveness rules (pure logic: no bus)."""

from __future__ import annotations

import pytest

from shared import cluster
from shared.cluster import Member, is_online, status_of


def test_a_member_is_online_while_its_heartbeat_is_younger_than_the_threshold() -> None:
    m = Member(name="node1", heartbeat=1000.0)
    assert is_online(m, now=1019.9, threshold=20)
    assert not is_online(m, now=1020.0, threshold=20)
    assert status_of(m, now=1005, threshold=20) == ("Online", "Fully operational")
    assert status_of(m, now=1042, threshold=20) == ("Offline", "No heartbeat for 42s")


def test_threshold_and_heartbeat_come_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_CLUSTER_OFFLINE_THRESHOLD", raising=False)
    monkeypatch.delenv("CORRAL_CLUSTER_HEARTBEAT", raising=False)
    assert cluster.offline_threshold() == 20.0  # LXD's cluster.offline_threshold
    assert cluster.heartbeat_interval() == 4.0
    monkeypatch.setenv("CORRAL_CLUSTER_OFFLINE_THRESHOLD", "6")
    monkeypatch.setenv("CORRAL_CLUSTER_HEARTBEAT", "10")
    # never more than a third of the threshold: a live node must not blink OFFLINE
    assert cluster.heartbeat_interval() == 2.0
    monkeypatch.setenv("CORRAL_CLUSTER_OFFLINE_THRESHOLD", "not-a-number")
    assert cluster.offline_threshold() == 20.0


def test_members_default_to_the_database_role() -> None:
    m = Member(name="node2")
    assert m.database and m.roles == ["database"]
    assert Member.model_validate(m.model_dump()) == m
