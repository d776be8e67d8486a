"""``snapshots.schedule`` and friends: when scheduled snapshots are due (pure logic).

LXD reads ``snapshots.schedule`` as one cron expression (``<minute> <hour> <dom> <month>
<dow>``) or a comma-separated list of aliases (``@hourly``, ``@daily``, ``@midnight``,
``@weekly``, ``@monthly``, ``@annually``, ``@yearly``), and ``@startup`` (a snapshot each
time the instance starts). Cron matching is croniter's (a well-kept library, not ours).

Why "due in (last, now]" and not "matches this minute" as LXD's once-a-minute task asks:
the service's pass runs every :func:`interval` seconds (configurable so tests need not
wait minutes) and may be late; a window between two passes fires each schedule once,
never twice, however the passes fall.
"""

from __future__ import annotations

from datetime import datetime, timezone

from shared.config import env_seconds, schedule_shift
from shared.errors import BadRequest

from . import snapshots

ENV_INTERVAL = "CORRAL_SNAPSHOT_INTERVAL"
DEFAULT_INTERVAL = 60.0
ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@annually": "0 0 1 1 *",
           "@yearly": "0 0 1 1 *"}
STARTUP = "@startup"


def interval() -> float:
    """Seconds between two passes of the schedule/expiry task (``CORRAL_SNAPSHOT_INTERVAL``,
    default 60, as LXD's once a minute)."""
    return env_seconds(ENV_INTERVAL, DEFAULT_INTERVAL, 0.2)


def parse(expr: str) -> tuple[list[str], bool]:
    """(cron expressions, has ``@startup``) of a ``snapshots.schedule``; 400 when bad."""
    expr = expr.strip()
    if not expr:
        return [], False
    if expr.startswith("@"):
        crons, startup = [], False
        for part in (p.strip() for p in expr.split(",")):
            if part == STARTUP:
                startup = True
            elif part in ALIASES:
                crons.append(ALIASES[part])
            else:
                raise BadRequest(f"Invalid snapshots.schedule {expr!r}: unknown alias "
                                 f"{part!r} (use {', '.join([*ALIASES, STARTUP])})")
        return crons, startup
    # croniter here, not at module level: only a cron schedule needs it (~0.5 MiB, 13
    # modules in the instance service; most instances have no schedule)
    from croniter import croniter

    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise BadRequest(f"Invalid snapshots.schedule {expr!r}: expected a cron expression "
                         "'<minute> <hour> <dom> <month> <dow>' or aliases such as @daily")
    return [expr], False


def due(expr: str, last: datetime, now: datetime) -> bool:
    """Whether a cron time of ``expr`` falls in (``last``, ``now``] (UTC)."""
    from croniter import croniter  # loaded by parse() already

    crons, _ = parse(expr)
    shift = schedule_shift()  # 0 but in tests (shared.config says why)
    last, now = last + shift, now + shift
    for cron in crons:
        nxt = croniter(cron, last.astimezone(timezone.utc)).get_next(datetime)
        if nxt <= now:
            return True
    return False


def started_since(expr: str, last_used_at: str, last: datetime) -> bool:
    """``@startup``: the instance started after ``last`` (its ``last_used_at``)."""
    _, startup = parse(expr)
    ts = snapshots.parse_time(last_used_at or snapshots.NEVER_USED, "last_used_at")
    return startup and ts is not None and ts > last


def check_config(config: dict[str, str]) -> None:
    """400 for a bad ``snapshots.*`` value (called by :mod:`.validate`)."""
    if "snapshots.schedule" in config:
        parse(config["snapshots.schedule"])
    if "snapshots.schedule.stopped" in config and config[
            "snapshots.schedule.stopped"] not in ("true", "false", "1", "0", "yes", "no",
                                                  "on", "off"):
        raise BadRequest("Invalid value for snapshots.schedule.stopped: expected true or "
                         "false")
    if "snapshots.expiry" in config:
        snapshots.parse_expiry(config["snapshots.expiry"])
    if "snapshots.pattern" in config:
        snapshots.next_name(config["snapshots.pattern"], [])
