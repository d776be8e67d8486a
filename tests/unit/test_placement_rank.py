"""Placement's choice among online members (services/gateway/placement.py), and which
instance verbs are routed to an instance's node."""

from __future__ import annotations

from collections import Counter

from services.gateway.placement import located, rank
from shared.cluster import Member, Resources


def member(name: str, free: int = 1, cpus: int = 2) -> Member:
    return Member(name=name, resources=Resources(cpus=cpus, memory_free=free))


def names(members: list[Member]) -> list[str]:
    return [m.name for m in members]


def test_fewest_instances_first_whatever_the_memory():
    online = [member("node1", free=8), member("node2", free=1)]
    assert names(rank(online, Counter(node1=3, node2=2))) == ["node2", "node1"]


def test_equal_counts_most_free_memory_then_cpus_then_name():
    assert names(rank([member("node1", 1), member("node2", 3)], Counter())) == [
        "node2", "node1"]
    assert names(rank([member("node1", 1, cpus=2), member("node2", 1, cpus=4)],
                      Counter(node1=1, node2=1))) == ["node2", "node1"]
    assert names(rank([member("node2"), member("node1")], Counter())) == ["node1", "node2"]


def test_verbs_about_one_instance_are_located():
    for verb in ("get", "state_put", "exec", "file_get", "snapshot_create", "backup_export",
                 "delete", "rename", "console_attach", "metadata_get"):
        assert located(verb), verb
    for verb in ("list", "create", "backup_import", "profile_get", "project_list",
                 "resources", "network_users"):
        assert not located(verb), verb


def test_scheduler_instance_as_lxd():
    import time

    from services.gateway.placement import Candidate, eligible

    now = time.time()

    def cand(name: str, mode: str | None = None, groups=("default",), beat: float = now):
        m = Member(name=name, heartbeat=beat)
        return Candidate(m, {"scheduler.instance": mode} if mode else {}, tuple(groups))

    cands = [cand("a"), cand("b", "manual"), cand("c", "group", ("gpu",)),
             cand("d", groups=("gpu",)), cand("e", beat=now - 3600)]
    assert [m.name for m in eligible(cands, None, now)] == ["a", "d"]
    assert [m.name for m in eligible(cands, "gpu", now)] == ["c", "d"]
    assert eligible(cands, "none", now) == []
