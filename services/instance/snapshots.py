"""Instance snapshot records: the KV bucket ``instance_snapshots``, owned by this service.

One record per snapshot, key ``key(project, instance, snapshot)``. The volume's snapshot
itself is the storage service's (``volume_snapshot_*`` verbs); this record is what LXD keeps
in its database: the instance's config as it was, so a restore brings both back.

Record shape (every module that copies, exports or imports snapshots reads this)::

    {"project": "default", "instance": "c1", "name": "snap0",       # short name
     "type": "container" | "virtual-machine", "architecture": "x86_64",
     "config": {...}, "devices": {...}, "profiles": [...],          # as the instance had them
     "expanded_config": {...}, "expanded_devices": {...},
     "ephemeral": False, "stateful": False, "description": "",
     "created_at": "<lxd time>", "expires_at": "0001-01-01T00:00:00Z",
     "last_used_at": "1970-01-01T00:00:00Z", "pool": "default",
     "creating": True,                                               # only while being made
     "deleting": True,                                               # only while being removed
     "renaming_to": "snap1",                                         # only while being renamed
     "memory_state": "<driver's description>"}                       # stateful (VM) only

``creating`` is the journal of a snapshot being made (record first, then the volume
snapshot): a record still ``creating`` at start is removed with its volume snapshot.
``deleting`` (set before the volume snapshot goes) and ``renaming_to`` (set before the
volume snapshot is renamed) are finished by the reconcile (:mod:`.snapshot_ops`). Readers
show only whole records (:func:`records`).

This module is pure: names, the ``snapshots.pattern`` template, ``snapshots.expiry`` and
``expires_at`` times, and LXD's snapshot object. The storage calls are in
:mod:`.snapshot_ops`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from dateutil.relativedelta import relativedelta

from shared.errors import BadRequest
from shared.models import lxd_time
from shared.state import Store, key

NO_EXPIRY = "0001-01-01T00:00:00Z"
NEVER_USED = "1970-01-01T00:00:00Z"
DEFAULT_PATTERN = "snap%d"
# Flags of a record that is not whole (see the module docstring).
JOURNAL = ("creating", "deleting", "renaming_to")


def snapshot_key(project: str, instance: str, snapshot: str) -> str:
    return key(project, instance, snapshot)


def whole(rec: dict[str, Any]) -> bool:
    """Made, and neither being removed nor renamed."""
    return not any(rec.get(f) for f in JOURNAL)


def all_records(store: Store, project: str, instance: str) -> list[dict[str, Any]]:
    """Every record of the instance, whole or not (what delete/rename of the instance
    must carry along), oldest first."""
    return sorted((r for r in store.cached()
                   if r["project"] == project and r["instance"] == instance),
                  key=lambda r: (created(r), r["name"]))


def created(rec: dict[str, Any]) -> datetime:
    """When the snapshot was taken, as a time: records carry LXD's timestamps in more than
    one spelling (a snapshot that came from a backup or a migration may have whole seconds,
    ``...:24Z``, one taken here nanoseconds, ``...:24.645509000Z``), which do not sort as
    strings (``"24."`` < ``"24Z"``)."""
    try:
        when = datetime.fromisoformat(rec["created_at"])
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def records(store: Store, project: str, instance: str) -> list[dict[str, Any]]:
    """The instance's snapshot records (cached read), oldest first (LXD's order); only
    whole ones (a snapshot being made or removed is not listed)."""
    return [r for r in all_records(store, project, instance) if whole(r)]


def find(store: Store, project: str, instance: str, snapshot: str) -> dict[str, Any] | None:
    for r in records(store, project, instance):
        if r["name"] == snapshot:
            return r
    return None


# -- names ---------------------------------------------------------------------------------

_FORBIDDEN = set("/?&+ ")  # LXD: IsURLSegmentSafe, and ValidName (no space, no slash)
MAX_NAME = 64  # the storage service's limit on a volume snapshot name


def check_name(name: Any) -> str:
    """A snapshot's short name, LXD's rule plus what no directory name can be; 400."""
    if not isinstance(name, str) or not name:
        raise BadRequest("Invalid snapshot name: a non-empty string is needed")
    bad = sorted(set(name) & _FORBIDDEN)
    if bad:
        raise BadRequest(f"Invalid snapshot name {name!r}: cannot contain "
                         + ", ".join(repr(c) for c in bad))
    if name in (".", "..") or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in name):
        raise BadRequest(f"Invalid snapshot name {name!r}: no whitespace or control "
                         "characters, not '.' or '..'")
    if name.startswith("-"):
        raise BadRequest(f"Invalid snapshot name {name!r}: cannot start with '-'")
    if len(name) > MAX_NAME:
        raise BadRequest(f"Invalid snapshot name {name[:20]!r}...: at most {MAX_NAME} "
                         "characters")
    return name


# Go's reference-time layout tokens (pongo2's ``date`` filter), longest first.
_GO_LAYOUT = [("January", "%B"), ("Monday", "%A"), ("2006", "%Y"), ("-0700", "%z"),
              ("Jan", "%b"), ("Mon", "%a"), ("MST", "%Z"), ("06", "%y"), ("01", "%m"),
              ("02", "%d"), ("15", "%H"), ("03", "%I"), ("04", "%M"), ("05", "%S"),
              ("PM", "%p")]
_TEMPLATE = re.compile(r"\{\{\s*creation_date\s*(?:\|\s*date\s*:\s*(['\"])(.*?)\1\s*)?\}\}")


def go_strftime(ts: datetime, layout: str) -> str:
    """``ts`` in Go's layout syntax (``2006-01-02_15-04-05``), as LXD's pongo2 renders."""
    out, i = [], 0
    while i < len(layout):
        for token, fmt in _GO_LAYOUT:
            if layout.startswith(token, i):
                out.append(ts.strftime(fmt))
                i += len(token)
                break
        else:
            out.append(layout[i])
            i += 1
    return "".join(out)


def render_pattern(pattern: str, now: datetime) -> str:
    """``snapshots.pattern`` with its ``{{ creation_date|date:'...' }}`` filled in (the
    only variable LXD gives the template)."""
    def fill(m: re.Match[str]) -> str:
        if m.group(2) is None:
            return now.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")  # Go's default String()
        return go_strftime(now, m.group(2))

    if "{%" in pattern or ("{{" in _TEMPLATE.sub("", pattern)):
        raise BadRequest(f"Invalid snapshots.pattern {pattern!r}: only "
                         "{{ creation_date|date:'<Go layout>' }} and %d are supported")
    return _TEMPLATE.sub(fill, pattern)


def _next_index(pattern: str, names: list[str]) -> int:
    """LXD's GetNextInstanceSnapshotIndex: one more than the highest ``%d`` in use."""
    head, _, tail = pattern.partition("%d")
    rx = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + r"$")
    found = [int(m.group(1)) for n in names if (m := rx.match(n))]
    return max(found) + 1 if found else 0


def next_name(pattern: str | None, names: list[str], now: datetime | None = None) -> str:
    """The name a snapshot gets when none is given (LXD's NextSnapshotName)."""
    rendered = render_pattern(pattern or DEFAULT_PATTERN, now or datetime.now(timezone.utc))
    count = rendered.count("%d")
    if count > 1:
        raise BadRequest("Snapshot pattern may contain '%d' only once")
    if count == 0 and rendered in names:
        rendered += "-%d"  # LXD appends -0, -1... when the plain name is taken
        count = 1
    if count == 1:
        rendered = rendered.replace("%d", str(_next_index(rendered, names)), 1)
    return check_name(rendered)


# -- times -----------------------------------------------------------------------------------

_EXPIRY = re.compile(r"^(\d+)(S|M|H|d|w|m|y)$")


def parse_expiry(expr: str | None) -> relativedelta | None:
    """``snapshots.expiry`` (``1d 2H``: S, M, H, d, w, m, y, each once) as a delta; None
    when empty. LXD's GetExpiry rules and message."""
    expr = (expr or "").strip()
    if not expr:
        return None
    parts: dict[str, int] = {}
    for value in expr.split(" "):
        m = _EXPIRY.match(value)
        if m is None or m.group(2) in parts:
            raise BadRequest(f"Invalid expiry expression {expr!r} (e.g. '1d 2H': S, M, H, "
                             "d, w, m, y, each at most once)")
        parts[m.group(2)] = int(m.group(1))
    g = parts.get
    return relativedelta(years=g("y", 0), months=g("m", 0), weeks=g("w", 0), days=g("d", 0),
                         hours=g("H", 0), minutes=g("M", 0), seconds=g("S", 0))


def expiry_from_config(config: dict[str, str], now: datetime) -> str:
    """``expires_at`` of a new snapshot of an instance with this expanded config."""
    delta = parse_expiry(config.get("snapshots.expiry"))
    return NO_EXPIRY if delta is None else lxd_time(now + delta)


_FRACTION = re.compile(r"\.(\d+)")


def parse_time(value: Any, what: str = "expires_at") -> datetime | None:
    """An RFC 3339 time as Go writes it (nanoseconds, ``Z`` or an offset); None for Go's
    zero time (no expiry). 400 for anything else."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Invalid {what}: expected an RFC 3339 time string")
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.strip(), 1)
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"Invalid {what} {value[:40]!r}: expected an RFC 3339 time such as "
                         "2030-01-02T15:04:05Z") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    if ts.year <= 1:  # Go's zero time: no expiry
        return None
    return ts


def normal_time(value: Any, what: str = "expires_at") -> str:
    """``value`` checked and written as LXD writes times (Go's zero time for none)."""
    ts = parse_time(value, what)
    return NO_EXPIRY if ts is None else lxd_time(ts)


def expired(rec: dict[str, Any], now: datetime) -> bool:
    ts = parse_time(rec.get("expires_at") or NO_EXPIRY)
    return ts is not None and ts <= now


# -- LXD's shapes ----------------------------------------------------------------------------

def snapshot_url(project: str, instance: str, name: str) -> str:
    out = f"/1.0/instances/{quote(instance, safe='')}/snapshots/{quote(name, safe='')}"
    return out if project == "default" else f"{out}?project={quote(project, safe='')}"


def public(rec: dict[str, Any], size: int = -1) -> dict[str, Any]:
    """LXD 5.0's InstanceSnapshot (``name`` is the short name), plus ``description``;
    ``size`` from snapshot_usage (-1, LXD's "cannot tell", where not read)."""
    return {
        "architecture": rec["architecture"], "config": rec["config"],
        "created_at": rec["created_at"], "devices": rec["devices"],
        "ephemeral": rec["ephemeral"], "expanded_config": rec["expanded_config"],
        "expanded_devices": rec["expanded_devices"],
        "expires_at": rec.get("expires_at") or NO_EXPIRY,
        "last_used_at": rec.get("last_used_at") or NEVER_USED, "name": rec["name"],
        "profiles": rec["profiles"], "stateful": rec["stateful"], "size": size,
        "description": rec.get("description", ""),
    }


def new_record(inst: dict[str, Any], name: str, expires_at: str, stateful: bool,
               now: datetime) -> dict[str, Any]:
    """The record of a snapshot of ``inst`` taken now (``creating`` until the volume's
    snapshot exists)."""
    return {
        "project": inst["project"], "instance": inst["name"], "name": name,
        "type": inst.get("type", "container"), "architecture": inst["architecture"],
        "config": dict(inst["config"]), "devices": {k: dict(v) for k, v in
                                                    inst["devices"].items()},
        "profiles": list(inst["profiles"]),
        "expanded_config": dict(inst["expanded_config"]),
        "expanded_devices": {k: dict(v) for k, v in inst["expanded_devices"].items()},
        "ephemeral": bool(inst.get("ephemeral")), "stateful": stateful,
        "description": inst.get("description", ""), "created_at": lxd_time(now),
        "expires_at": expires_at, "last_used_at": NEVER_USED, "pool": inst.get("pool", ""),
        "creating": True,
    }
