"""Project restrictions more than one service enforces (LXD's lxd/project/permissions.go).

Why shared: ``restricted.snapshots`` covers instance snapshots (instance service) and
custom volume snapshots (taken through the gateway's volume routes and the storage
service); one rule and one message for both. Pure: the caller gives the project's config.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import BadRequest


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "on")


def snapshots_allowed(config: Mapping[str, str]) -> bool:
    """LXD's AllowSnapshotCreation: ``restricted.snapshots`` is ``block`` by default once
    the project is ``restricted=true``; without ``restricted`` it means nothing."""
    if not _true(config.get("restricted")):
        return True
    return config.get("restricted.snapshots", "block") == "allow"


def check_snapshot_creation(project: str, config: Mapping[str, str]) -> None:
    """400 with LXD's message (and how to allow them) when ``project`` takes no
    snapshots (LXD answers a 500; it is the request that cannot be served here)."""
    if not snapshots_allowed(config):
        raise BadRequest(f'Project "{project}" doesn\'t allow for snapshot creation '
                         "(restricted.snapshots is block): set restricted.snapshots=allow "
                         "on the project to take them")
