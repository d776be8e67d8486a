"""Unshifting a tree received from LXD: its idmap (``MigrationHeader.idmap``) says how.

LXD keeps an unprivileged container's tree shifted on disk (ids from 1000000 by default)
and sends that map with the offer (its ``DiskIdmap``); LXD's target resets the disk map
to it and shifts again at the next start. Corral keeps trees with the container's own ids
(idmapped mounts, or a shift at create on hosts without them), so the target brings every
file back from the map's host range to its container range, owner and group, before the
import. POSIX ACLs and v3 file capabilities (which carry a root id) are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def ranges(entries: list[dict[str, Any]], uid: bool) -> list[tuple[int, int, int]]:
    """(hostid, nsid, range) of the map's entries for uids (or gids)."""
    return [(int(e.get("hostid", 0)), int(e.get("nsid", 0)), int(e.get("maprange", 0)))
            for e in entries if bool(e.get("isuid" if uid else "isgid"))]


def _back(value: int, table: list[tuple[int, int, int]]) -> int:
    for host, ns, size in table:
        if host <= value < host + size:
            return value - host + ns
    return value


def unshift(root: Path, entries: list[dict[str, Any]]) -> int:
    """Bring ``root``'s files back to the container's ids; returns how many changed."""
    uids, gids = ranges(entries, True), ranges(entries, False)
    if not uids and not gids:
        return 0
    changed = 0
    for top, dirs, files in os.walk(root):
        for name in (top, *(os.path.join(top, n) for n in (*dirs, *files))):
            st = os.lstat(name)
            uid, gid = _back(st.st_uid, uids), _back(st.st_gid, gids)
            if (uid, gid) != (st.st_uid, st.st_gid):
                mode = st.st_mode
                os.lchown(name, uid, gid)
                if not os.path.islink(name) and mode & 0o6000:
                    os.chmod(name, mode & 0o7777)  # chown drops setuid/setgid bits
                changed += 1
    return changed
