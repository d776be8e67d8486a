"""User-namespace id maps for unprivileged containers.

Why: an unprivileged container runs its root as an ordinary host uid taken from root's
subordinate range in ``/etc/subuid``/``/etc/subgid`` (LXD does the same). This module reads
those ranges, picks the map, renders it for LXC (``lxc.idmap``) and for LXD's API
(``volatile.idmap.current``), and translates single ids both ways for the file API.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

from shared.errors import BadRequest, Internal

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
# LXD's default when root has no range yet.
DEFAULT_BASE = 1000000
DEFAULT_SIZE = 1000000000
MIN_SIZE = 65536
# LXD maps the whole range; cap it so ids stay readable and the map stays within 32 bits.
MAX_SIZE = 1000000000
OVERFLOW_ID = 65534


@dataclass(frozen=True)
class IdRange:
    """One contiguous mapping: container ids [nsid, nsid+size) -> host [hostid, ...)."""

    isuid: bool
    isgid: bool
    hostid: int
    nsid: int
    size: int

    def lxc_line(self) -> str:
        kind = "u" if self.isuid else "g"
        return f"{kind} {self.nsid} {self.hostid} {self.size}"


@dataclass(frozen=True)
class IdMap:
    """A uid range and a gid range; what an unprivileged container runs with."""

    entries: tuple[IdRange, ...]

    def lxc_lines(self) -> list[str]:
        """Values for ``lxc.idmap`` config keys, one per range."""
        return [e.lxc_line() for e in self.entries]

    def to_json(self) -> str:
        """LXD's ``volatile.idmap.current`` format."""
        return json.dumps([
            {"Isuid": e.isuid, "Isgid": e.isgid, "Hostid": e.hostid, "Nsid": e.nsid,
             "Maprange": e.size}
            for e in self.entries
        ])

    @staticmethod
    def from_json(text: str) -> "IdMap":
        try:
            raw = json.loads(text)
            return IdMap(tuple(IdRange(bool(r["Isuid"]), bool(r["Isgid"]), int(r["Hostid"]),
                                       int(r["Nsid"]), int(r["Maprange"])) for r in raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"Invalid idmap JSON {text!r}: {exc}") from exc

    def _shift(self, value: int, uid: bool, to_host: bool) -> int:
        for e in self.entries:
            if (e.isuid if uid else e.isgid):
                src, dst = (e.nsid, e.hostid) if to_host else (e.hostid, e.nsid)
                if src <= value < src + e.size:
                    return dst + value - src
        if to_host:
            kind = "uid" if uid else "gid"
            raise BadRequest(f"Container {kind} {value} is outside the container's id map")
        return OVERFLOW_ID  # a host id the container cannot see (the kernel's overflowuid)

    def uid_to_host(self, uid: int) -> int:
        return self._shift(uid, True, True)

    def gid_to_host(self, gid: int) -> int:
        return self._shift(gid, False, True)

    def uid_from_host(self, uid: int) -> int:
        return self._shift(uid, True, False)

    def gid_from_host(self, gid: int) -> int:
        return self._shift(gid, False, False)


def _read_range(path: Path, user: str = "root") -> tuple[int, int] | None:
    """First ``user:start:count`` line of a subid file, or None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, "0"):
            try:
                start, count = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            if count > 0:
                return start, count
    return None


def ensure_subids(subuid: Path = SUBUID, subgid: Path = SUBGID) -> None:
    """Give root LXD's default subordinate range when it has none.

    Why: Debian ships these files empty; unprivileged containers need a range. Locked with
    flock so concurrent callers (services, tests) do not add the line twice.
    """
    for path in (subuid, subgid):
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                content = fh.read()
                if _read_range(path) is None:
                    if content and not content.endswith("\n"):
                        fh.write("\n")
                    fh.write(f"root:{DEFAULT_BASE}:{DEFAULT_SIZE}\n")
                    fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def host_idmap(subuid: Path = SUBUID, subgid: Path = SUBGID) -> IdMap:
    """The map for unprivileged containers: container 0 -> start of root's range."""
    ranges = []
    for path, isuid in ((subuid, True), (subgid, False)):
        found = _read_range(path)
        if found is None:
            raise Internal(f"root has no subordinate id range in {path}; "
                           "run ensure_subids() (make up does this)")
        start, count = found
        if count < MIN_SIZE:
            raise Internal(f"root's range in {path} has {count} ids; at least {MIN_SIZE} "
                           "are needed for an unprivileged container")
        ranges.append(IdRange(isuid, not isuid, start, 0, min(count, MAX_SIZE)))
    return IdMap(tuple(ranges))


def read_proc_map(pid: int) -> list[tuple[int, int, int]]:
    """``/proc/<pid>/uid_map`` as (nsid, hostid, size) rows; for checks and tests."""
    rows = []
    for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines():
        a, b, c = line.split()
        rows.append((int(a), int(b), int(c)))
    return rows
