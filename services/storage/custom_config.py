"""What a custom volume request may say: LXD's body shapes and volume config keys, checked
before anything is made (a bad request leaves no record and no subvolume).

Why a module of its own: the same checks serve create, PUT/PATCH, copy and import, and
they are pure (unit-tested without a pool).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional

from dateutil.relativedelta import relativedelta
from pydantic import BaseModel, ValidationError

from shared.config import schedule_shift
from shared.errors import BadRequest
from shared.messages.lxd import LxdBody, describe

from .drivers.util import parse_size

CONTENT_TYPES = ("filesystem", "block")
BLOCK_DEFAULT_SIZE = "10GiB"  # LXD's volume.size default for block volumes
# Keys a custom volume takes on dir and btrfs pools (LXD 5.0's common volume rules).
KEYS = ("size", "security.shifted", "security.unmapped", "security.shared",
        "snapshots.expiry", "snapshots.pattern", "snapshots.schedule")
BOOL_KEYS = ("security.shifted", "security.unmapped", "security.shared")
ZERO_TIME = "0001-01-01T00:00:00Z"  # LXD's "no expiry"


class VolumeSource(LxdBody):
    type: Optional[str] = None
    name: Optional[str] = None
    pool: Optional[str] = None
    project: Optional[str] = None
    volume_only: Optional[bool] = None
    refresh: Optional[bool] = None
    mode: Optional[str] = None


class StorageVolumePut(LxdBody):
    description: Optional[str] = None
    config: Optional[dict[str, str]] = None
    restore: Optional[str] = None


class StorageVolumesPost(StorageVolumePut):
    name: Optional[str] = None
    type: Optional[str] = None
    content_type: Optional[str] = None
    source: Optional[VolumeSource] = None


class StorageVolumePost(LxdBody):
    name: Optional[str] = None
    pool: Optional[str] = None
    project: Optional[str] = None
    migration: Optional[bool] = None
    volume_only: Optional[bool] = None


class SnapshotsPost(LxdBody):
    name: Optional[str] = None
    expires_at: Optional[str] = None


class SnapshotPut(LxdBody):
    description: Optional[str] = None
    expires_at: Optional[str] = None


def parse_body(model: type[BaseModel], body: dict[str, Any] | None) -> Any:
    """``body`` read as LXD's ``model`` (strict types, as Go's decoder): 400 otherwise."""
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        raise BadRequest(f"Invalid request body: {describe(exc)}") from None


def check_config(config: dict[str, str] | None, driver: str, content_type: str
                 ) -> dict[str, str]:
    """A custom volume's config, normalised; 400 naming a key the pool cannot take.

    ``size`` on a dir pool's filesystem volume is refused: dir has no quotas here (LXD
    would skip it with only a log line, leaving a limit that is never applied)."""
    out: dict[str, str] = {}
    for key, value in (config or {}).items():
        if not isinstance(value, str):
            raise BadRequest(f"Invalid value for {key!r}: expected a string")
        if value == "":
            continue  # an empty value is no value (lxc storage volume unset sends "")
        if key.startswith("user."):
            out[key] = value
            continue
        if key.startswith("block.") or key.startswith("volatile."):
            raise BadRequest(f"Invalid option for volume {key!r}: {driver} pools have no "
                             "block-backed filesystems (block.* keys are for lvm and ceph)")
        if key not in KEYS:
            raise BadRequest(f"Invalid option for volume {key!r}: valid keys are "
                             f"{', '.join(KEYS)} and user.*")
        if key == "size":
            if parse_size(value, "size") <= 0:
                raise BadRequest("Invalid value for 'size': must be more than 0")
            if driver == "dir" and content_type == "filesystem":
                raise BadRequest("Storage pool driver 'dir' cannot limit a filesystem "
                                 "volume's size (the backing filesystem doesn't support "
                                 "quotas); use a btrfs pool or leave 'size' unset")
        elif key in BOOL_KEYS:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise BadRequest(f"Invalid value for {key!r}: expected true or false")
        elif key == "snapshots.expiry":
            expiry_delta(value)
        elif key == "snapshots.schedule":
            schedules(value)
        elif key == "snapshots.pattern":
            if value.count("%d") > 1:
                raise BadRequest("Snapshot pattern may contain '%d' only once")
        out[key] = value
    if content_type == "block":
        out.setdefault("size", BLOCK_DEFAULT_SIZE)
    return out


def check_content_type(value: str | None) -> str:
    value = value or "filesystem"
    if value not in CONTENT_TYPES:
        raise BadRequest(f"Invalid content type {value!r}: expected filesystem or block")
    return value


def schedules(value: str) -> list[str]:
    """LXD's ``snapshots.schedule``: one cron expression (``<minute> <hour> <dom> <month>
    <dow>``) or a comma-separated list of aliases (``@hourly``, ``@daily``...); 400
    otherwise. Cron itself is croniter's."""
    from croniter import croniter

    parts = [p.strip() for p in value.split(",")] if value.strip().startswith("@") \
        else [value.strip()]
    for part in parts:
        if not croniter.is_valid(part):
            raise BadRequest(f"Invalid value {value!r} for 'snapshots.schedule': expected a "
                             "cron expression ('0 6 * * *') or aliases ('@hourly, @daily')")
    return parts


def schedule_due(value: str, last: datetime, now: datetime) -> bool:
    """Whether a scheduled time falls in ``(last, now]``: each one fires once, however
    late or early the passes that look come."""
    from croniter import croniter

    try:
        parts = schedules(value)
    except BadRequest:
        return False
    shift = schedule_shift()  # 0 but in tests (shared.config says why)
    return any(croniter(p, last + shift).get_next(datetime) <= now + shift for p in parts)


_EXPIRY = re.compile(r"^(\d+)(M|H|d|w|m|y)$")


def expiry_delta(value: str) -> relativedelta:
    """LXD's ``snapshots.expiry`` ("1d", "2w 3H"; M minutes, H hours, d days, w weeks,
    m months, y years) as a duration; months and years are calendar ones (LXD's
    ``AddDate``), hence dateutil's relativedelta."""
    total = relativedelta()
    for part in value.split():
        m = _EXPIRY.match(part)
        if not m:
            raise BadRequest(f"Invalid value {value!r} for 'snapshots.expiry': expected "
                             "e.g. '1d', '2w' or '1y' (units M, H, d, w, m, y)")
        n, unit = int(m.group(1)), m.group(2)
        total += {"M": relativedelta(minutes=n), "H": relativedelta(hours=n),
                  "d": relativedelta(days=n), "w": relativedelta(weeks=n),
                  "m": relativedelta(months=n), "y": relativedelta(years=n)}[unit]
    return total


def parse_time(value: str | datetime | None) -> datetime | None:
    """An RFC 3339 time from a client (nanoseconds allowed); None for unset/zero. A
    datetime (what YAML makes of an index.yaml's times) is taken as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        if value.year <= 1:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(
            timezone.utc)
    if not isinstance(value, str):
        raise BadRequest(f"Invalid time {value!r}: expected an RFC 3339 time")
    if not value or value.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        raise BadRequest(f"Invalid expires_at {value!r}: expected an RFC 3339 time such "
                         "as 2030-01-31T12:00:00Z")
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone).astimezone(timezone.utc)


def time_order(value: Any) -> tuple[int, datetime]:
    """A sort key of a record's time (``created_at``): as a time, not as its spelling.
    Records carry LXD's timestamps in more than one spelling (one from an LXD backup's
    index.yaml or an older record may have whole seconds or an offset, one made here
    nanoseconds), and ``"...:24.5Z"`` sorts before ``"...:24Z"`` as strings. Unset or
    unreadable times sort last (after every real time), as the old ``"~"`` default did."""
    try:
        ts = parse_time(value) if value is not None else None
    except BadRequest:
        ts = None
    if value is None or (ts is None and not str(value).startswith("0001-01-01")):
        return (1, datetime.min.replace(tzinfo=timezone.utc))
    return (0, ts or datetime.min.replace(tzinfo=timezone.utc))


def format_time(ts: datetime | None) -> str:
    if ts is None:
        return ZERO_TIME
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def snapshot_expiry(expires_at: str | None, volume_config: dict[str, str],
                    now: datetime | None = None) -> str:
    """The expiry a new snapshot gets: the client's, else the volume's snapshots.expiry."""
    if expires_at is not None:
        return format_time(parse_time(expires_at))
    rule = volume_config.get("snapshots.expiry")
    if not rule:
        return ZERO_TIME
    return format_time((now or datetime.now(timezone.utc)) + expiry_delta(rule))


def next_snapshot_name(pattern: str, taken: set[str]) -> str:
    """LXD's automatic snapshot name: ``snapshots.pattern`` (default ``snap%d``) with the
    lowest free number."""
    pattern = pattern or "snap%d"
    if "%d" not in pattern:
        return pattern if pattern not in taken else f"{pattern}-1"
    i = 0
    while pattern.replace("%d", str(i)) in taken:
        i += 1
    return pattern.replace("%d", str(i))
