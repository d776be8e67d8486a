"""Instance snapshots' pure logic: names, ``snapshots.pattern``, ``snapshots.expiry``,
``expires_at`` times, schedules, and the config a restore writes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.instance import restore, snapshot_schedule, snapshots
from shared.errors import BadRequest

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", ["snap0", "a.b", "x_y-z", "é", "s" * 64])
def test_good_names(name: str) -> None:
    assert snapshots.check_name(name) == name


@pytest.mark.parametrize("name", ["", None, 3, "a b", "a/b", "..", ".", "a?b", "a&b", "a+b",
                                  "-x", "a\tb", "a\0b", "s" * 65])
def test_bad_names_are_400(name: object) -> None:
    with pytest.raises(BadRequest):
        snapshots.check_name(name)


def test_next_name_counts_as_lxd() -> None:
    assert snapshots.next_name(None, [], NOW) == "snap0"
    assert snapshots.next_name(None, ["snap0", "snap4", "other"], NOW) == "snap5"
    assert snapshots.next_name("fixed", [], NOW) == "fixed"
    assert snapshots.next_name("fixed", ["fixed", "fixed-0"], NOW) == "fixed-1"
    pattern = "s-{{ creation_date|date:'2006-01-02_15-04-05' }}-%d"
    assert snapshots.next_name(pattern, [], NOW) == "s-2026-03-04_05-06-07-0"
    assert snapshots.next_name('{{creation_date|date:"Jan06"}}-%d', [], NOW) == "Mar26-0"
    with pytest.raises(BadRequest):
        snapshots.next_name("a%db%d", [], NOW)
    with pytest.raises(BadRequest):
        snapshots.next_name("{{ creation_date|date:'Jan 2' }}", [], NOW)  # a space
    with pytest.raises(BadRequest):
        snapshots.next_name("{% if x %}", [], NOW)


def test_go_layout() -> None:
    assert snapshots.go_strftime(NOW, "2006-01-02T15:04:05 Mon Jan PM") == \
        "2026-03-04T05:06:07 Wed Mar AM"


def test_expiry_expressions() -> None:
    assert snapshots.expiry_from_config({}, NOW) == snapshots.NO_EXPIRY
    got = snapshots.expiry_from_config({"snapshots.expiry": "1d 2H"}, NOW)
    assert got.startswith("2026-03-05T07:06:07")
    got = snapshots.expiry_from_config({"snapshots.expiry": "1m 1y 3w 30S 5M"}, NOW)
    assert got.startswith("2027-04-25T05:11:37")
    for bad in ("1", "1d 1d", "2x", "1d  2H", "-1d"):
        with pytest.raises(BadRequest):
            snapshots.parse_expiry(bad)


def test_times() -> None:
    assert snapshots.parse_time("0001-01-01T00:00:00Z") is None
    assert snapshots.parse_time(None) is None
    ts = snapshots.parse_time("2030-01-02T03:04:05.123456789Z")
    assert ts == datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert snapshots.parse_time("2030-01-02T05:04:05+02:00") == \
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for bad in ("tomorrow", 5, "2030-13-01T00:00:00Z"):
        with pytest.raises(BadRequest):
            snapshots.parse_time(bad)
    assert snapshots.expired({"expires_at": "2026-03-04T05:06:06Z"}, NOW)
    assert not snapshots.expired({"expires_at": "2026-03-04T05:06:08Z"}, NOW)
    assert not snapshots.expired({"expires_at": snapshots.NO_EXPIRY}, NOW)


def test_only_whole_records_are_listed() -> None:
    class Fake:
        def cached(self) -> list[dict]:
            base = {"project": "default", "instance": "c1", "created_at": "2026"}
            return [{**base, "name": "a"}, {**base, "name": "b", "creating": True},
                    {**base, "name": "c", "deleting": True},
                    {**base, "name": "d", "renaming_to": "e"},
                    {**base, "instance": "c2", "name": "z"}]

    assert [r["name"] for r in snapshots.records(Fake(), "default", "c1")] == ["a"]
    assert len(snapshots.all_records(Fake(), "default", "c1")) == 4
    assert snapshots.find(Fake(), "default", "c1", "b") is None


def test_schedules() -> None:
    due = snapshot_schedule.due
    last = datetime(2026, 3, 4, 5, 59, 30, tzinfo=timezone.utc)
    now = datetime(2026, 3, 4, 6, 0, 30, tzinfo=timezone.utc)
    assert due("@hourly", last, now) and due("0 6 * * *", last, now)
    assert due("@daily, @hourly", last, now)
    assert not due("@daily", last, now) and not due("30 6 * * *", last, now)
    assert due("* * * * *", last, now)
    assert not due("* * * * *", now, now)  # the same window never fires twice
    assert snapshot_schedule.parse("@startup") == ([], True)
    assert snapshot_schedule.started_since("@startup, @daily", "2026-03-04T06:00:00Z", last)
    assert not snapshot_schedule.started_since("@daily", "2026-03-04T06:00:00Z", last)
    for bad in ("@often", "* * *", "every day", "* * * * * *", "61 * * * *"):
        with pytest.raises(BadRequest):
            snapshot_schedule.parse(bad)

def test_schedule_shift_moves_only_the_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORRAL_SNAPSHOT_SCHEDULE_SHIFT (tests' way to a near cron minute) matches the cron
    times that far ahead; unset, a window without a minute boundary fires nothing."""
    last = datetime(2026, 3, 4, 6, 0, 10, tzinfo=timezone.utc)
    now = datetime(2026, 3, 4, 6, 0, 20, tzinfo=timezone.utc)
    monkeypatch.delenv("CORRAL_SNAPSHOT_SCHEDULE_SHIFT", raising=False)
    assert not snapshot_schedule.due("* * * * *", last, now)
    monkeypatch.setenv("CORRAL_SNAPSHOT_SCHEDULE_SHIFT", "45")  # (06:00:55, 06:01:05]
    assert snapshot_schedule.due("* * * * *", last, now)
    assert not snapshot_schedule.due("2 6 * * *", last, now)


def test_config_keys_checked() -> None:
    snapshot_schedule.check_config({"snapshots.schedule": "@daily", "snapshots.expiry": "1w",
                                    "snapshots.pattern": "snap%d",
                                    "snapshots.schedule.stopped": "true"})
    for bad in ({"snapshots.schedule.stopped": "maybe"}, {"snapshots.expiry": "1q"},
                {"snapshots.pattern": "%d%d"}, {"snapshots.schedule": "@often"}):
        with pytest.raises(BadRequest):
            snapshot_schedule.check_config(bad)


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(snapshot_schedule.ENV_INTERVAL, "0.5")
    assert snapshot_schedule.interval() == 0.5
    monkeypatch.setenv(snapshot_schedule.ENV_INTERVAL, "junk")
    assert snapshot_schedule.interval() == snapshot_schedule.DEFAULT_INTERVAL


def test_restored_config_keeps_host_keys() -> None:
    current = {"user.a": "now", "volatile.idmap.current": "CUR", "volatile.eth0.host_name":
               "vethNOW", "volatile.last_state.power": "RUNNING",
               "volatile.eth0.hwaddr": "00:16:3e:00:00:02", "volatile.uuid": "u-now"}
    snap = {"user.b": "then", "volatile.idmap.current": "OLD", "volatile.eth0.host_name":
            "vethOLD", "volatile.last_state.power": "STOPPED",
            "volatile.eth0.hwaddr": "00:16:3e:00:00:01", "volatile.uuid": "u-then"}
    out = restore.restored_config(current, snap)
    assert out["user.b"] == "then" and "user.a" not in out
    assert out["volatile.idmap.current"] == "CUR"
    assert out["volatile.eth0.host_name"] == "vethNOW"
    assert out["volatile.last_state.power"] == "RUNNING"
    assert out["volatile.eth0.hwaddr"] == "00:16:3e:00:00:01"  # the snapshot's, as LXD
    assert out["volatile.uuid"] == "u-then"
    assert out["volatile.uuid.generation"]


def test_public_shape() -> None:
    inst = {"project": "default", "name": "c1", "type": "container", "architecture": "x86_64",
            "config": {"a": "b"}, "devices": {}, "profiles": ["default"],
            "expanded_config": {}, "expanded_devices": {}, "ephemeral": False,
            "description": "d", "pool": "p"}
    rec = snapshots.new_record(inst, "s0", snapshots.NO_EXPIRY, False, NOW)
    assert rec["creating"] and rec["instance"] == "c1" and rec["pool"] == "p"
    pub = snapshots.public(rec)
    assert pub["name"] == "s0" and pub["size"] == -1 and "creating" not in pub
    assert set(pub) >= {"architecture", "config", "created_at", "devices", "ephemeral",
                        "expanded_config", "expanded_devices", "expires_at", "last_used_at",
                        "name", "profiles", "stateful", "size"}
    assert snapshots.snapshot_url("p1", "c 1", "s/0") == \
        "/1.0/instances/c%201/snapshots/s%2F0?project=p1"


def test_snapshots_sort_by_time_whatever_the_spelling() -> None:
    """A snapshot that came from a backup or a migration has whole seconds, one taken here
    nanoseconds: as strings "...:24." sorts before "...:24Z" (a refresh listed r2, r1)."""

    class Cached:
        def __init__(self, recs):
            self.recs = recs

        def cached(self):
            return self.recs

    recs = [{"project": "default", "instance": "c", "name": "r2",
             "created_at": "2026-11-30T07:27:24.645509000Z"},
            {"project": "default", "instance": "c", "name": "r1",
             "created_at": "2026-11-30T07:27:24Z"},
            {"project": "default", "instance": "c", "name": "r0",
             "created_at": "2026-11-30T07:27:23.5+00:00"},
            {"project": "default", "instance": "other", "name": "x",
             "created_at": "2026-11-30T07:27:20Z"}]
    got = [r["name"] for r in snapshots.all_records(Cached(recs), "default", "c")]
    assert got == ["r0", "r1", "r2"]
