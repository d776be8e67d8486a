"""Custom volume requests checked before anything is made (services/storage/custom_config)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.storage.custom_config import (
    StorageVolumesPost,
    check_config,
    check_content_type,
    expiry_delta,
    next_snapshot_name,
    parse_body,
    parse_time,
    schedule_due,
    snapshot_expiry,
)
from shared.errors import BadRequest


def test_config_keys_per_driver_and_content_type() -> None:
    assert check_config({"size": "1GiB", "user.x": "y", "security.shifted": "true"},
                        "btrfs", "filesystem") == {"size": "1GiB", "user.x": "y",
                                                   "security.shifted": "true"}
    assert check_config({"user.gone": ""}, "btrfs", "filesystem") == {}  # "" unsets
    assert check_config({"security.shared": "true"}, "dir", "block") == {
        "security.shared": "true", "size": "10GiB"}
    assert check_config({}, "dir", "block") == {"size": "10GiB"}  # LXD's default
    assert check_config({"size": "64MiB"}, "dir", "block") == {"size": "64MiB"}


@pytest.mark.parametrize("config,driver,content,words", [
    ({"size": "1GiB"}, "dir", "filesystem", "quotas"),
    ({"size": "0"}, "btrfs", "filesystem", "more than 0"),
    ({"size": "huge"}, "btrfs", "filesystem", "size"),
    ({"block.filesystem": "ext4"}, "btrfs", "filesystem", "block"),
    ({"snapshots.schedule": "every day"}, "btrfs", "filesystem", "schedule"),
    ({"snapshots.schedule": "@daily, @sometimes"}, "btrfs", "filesystem", "schedule"),
    ({"snapshots.expiry": "tomorrow"}, "btrfs", "filesystem", "expiry"),
    ({"snapshots.pattern": "%d-%d"}, "btrfs", "filesystem", "once"),
    ({"security.shifted": "maybe"}, "btrfs", "filesystem", "true or false"),
    ({"nope": "1"}, "btrfs", "filesystem", "nope"),
])
def test_bad_config_is_a_400_naming_the_key(config, driver, content, words) -> None:
    with pytest.raises(BadRequest) as err:
        check_config(config, driver, content)
    assert words in err.value.message


def test_content_type_and_body_shapes() -> None:
    assert check_content_type(None) == "filesystem"
    with pytest.raises(BadRequest):
        check_content_type("tape")
    with pytest.raises(BadRequest) as err:
        parse_body(StorageVolumesPost, {"name": "v", "config": {"size": 5}})
    assert "config" in err.value.message
    body = parse_body(StorageVolumesPost, {"name": "v", "source": {"type": "copy",
                                                                   "name": "w"}})
    assert body.source.name == "w"


def test_expiry_and_times() -> None:
    t = datetime(2030, 1, 31, tzinfo=timezone.utc)
    assert t + expiry_delta("1d 2H") == t + timedelta(days=1, hours=2)
    assert t + expiry_delta("3w") == t + timedelta(weeks=3)
    assert t + expiry_delta("1m") == datetime(2030, 2, 28, tzinfo=timezone.utc)  # calendar
    assert t + expiry_delta("1y") == datetime(2031, 1, 31, tzinfo=timezone.utc)
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("2030-01-02T03:04:05.123456789Z") == datetime(
        2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert parse_time("2030-01-02T05:04:05+02:00") == datetime(2030, 1, 2, 3, 4, 5,
                                                               tzinfo=timezone.utc)
    with pytest.raises(BadRequest):
        parse_time("next week")
    assert parse_time(None) is None
    # YAML makes datetimes of index.yaml's times
    assert parse_time(datetime(1, 1, 1)) is None
    assert parse_time(datetime(2030, 1, 1)) == datetime(2030, 1, 1, tzinfo=timezone.utc)
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert snapshot_expiry(None, {}, now).startswith("0001-01-01")
    assert snapshot_expiry(None, {"snapshots.expiry": "1d"}, now).startswith("2030-01-02T00")
    assert snapshot_expiry("2031-01-01T00:00:00Z", {"snapshots.expiry": "1d"},
                           now).startswith("2031-01-01")


def test_schedules_fire_once_in_their_window() -> None:
    assert check_config({"snapshots.schedule": "@hourly, @daily"}, "dir", "filesystem")
    t = datetime(2030, 1, 1, 5, 59, 30, tzinfo=timezone.utc)
    assert schedule_due("@hourly", t, t + timedelta(seconds=40))  # 06:00 is in it
    assert not schedule_due("@hourly", t + timedelta(seconds=40), t + timedelta(seconds=80))
    assert schedule_due("0 6 * * *", t, t + timedelta(minutes=1))
    assert not schedule_due("0 7 * * *", t, t + timedelta(minutes=1))
    assert schedule_due("@daily, @hourly", t, t + timedelta(minutes=1))
    assert not schedule_due("not cron", t, t + timedelta(days=3))


def test_automatic_snapshot_names() -> None:
    assert next_snapshot_name("", set()) == "snap0"
    assert next_snapshot_name("", {"snap0", "snap1"}) == "snap2"
    assert next_snapshot_name("backup-%d", {"backup-0"}) == "backup-1"

def test_schedule_shift_moves_only_the_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORRAL_SNAPSHOT_SCHEDULE_SHIFT matches cron times that many seconds ahead."""
    t = datetime(2030, 1, 1, 6, 0, 10, tzinfo=timezone.utc)
    monkeypatch.delenv("CORRAL_SNAPSHOT_SCHEDULE_SHIFT", raising=False)
    assert not schedule_due("* * * * *", t, t + timedelta(seconds=10))
    monkeypatch.setenv("CORRAL_SNAPSHOT_SCHEDULE_SHIFT", "45")
    assert schedule_due("* * * * *", t, t + timedelta(seconds=10))
