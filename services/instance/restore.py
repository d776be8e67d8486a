"""Snapshot restore: LXD's ``PUT /1.0/instances/<name>`` carrying ``restore``.

Why its own path: LXD's ``instancePut`` branches on ``restore`` before anything else, and
a restore never reads the body's config, devices or profiles. ``lxc restore c1 snap0``
sends them empty, so treating that PUT as an update once replaced the instance's own
config and devices with nothing. Here the request is decided before any change: a
snapshot that does not exist is a 404 with LXD's message and the instance stays as it was.

Corral keeps no instance snapshots yet, so :func:`find_snapshot` finds none; the snapshots
issue makes it look its records up and puts the real restore after it in :func:`restore`.
"""

from __future__ import annotations

from typing import Any

from shared.errors import BadRequest, NotFound

from .context import Context


def snapshot_name(instance: str, snap: Any) -> str:
    """The full ``<instance>/<snapshot>`` name of ``snap`` as LXD reads ``restore``.

    A bare name belongs to ``instance``; a full name must be one of its own snapshots.
    """
    if not isinstance(snap, str) or not snap.strip():
        raise BadRequest("Invalid restore request: 'restore' must be a snapshot name")
    owner, sep, short = snap.rpartition("/")
    if sep and owner != instance:
        raise BadRequest(f"Invalid snapshot {snap!r}: {instance!r} can only be restored "
                         "from one of its own snapshots")
    if not short.strip() or short in (".", "..") or "\0" in short:
        raise BadRequest(f"Invalid snapshot name {short!r}")
    return f"{instance}/{short}"


async def find_snapshot(ctx: Context, project: str, full_name: str) -> dict[str, Any] | None:
    """The snapshot's record, or None: instances have no snapshots yet."""
    return None


async def restore(ctx: Context, rec: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Restore ``rec`` from the snapshot ``body["restore"]``; nothing changes on failure."""
    full = snapshot_name(rec["name"], body.get("restore"))
    snap = await find_snapshot(ctx, rec["project"], full)
    if snap is None:
        raise NotFound(f"Snapshot {full} does not exist")
    raise BadRequest(f"Restoring snapshot {full} is not supported yet")
