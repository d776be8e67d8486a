"""Project limits and restrictions at instance create and update (the service's side).

Why a lock per project: a limit such as ``limits.instances=1`` is a fact about all of
the project's instances, so the check and the reservation of the new record must not
interleave with another create in the same project (LXD does both in one database
transaction). The lock covers one service process; the instance service runs as one
replica per cluster for now. A project without ``limits.*`` keys has no such fact to
protect: its creates do not take the lock (``guard``), so fifty launches at once are
checked side by side instead of one after another (the last of them waited for every
other's image lookup and record write, and timed out under load).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import project_limits
from .project_limits import Instance

if TYPE_CHECKING:
    from .context import Context

_locks: dict[str, asyncio.Lock] = {}


def lock(project: str) -> asyncio.Lock:
    return _locks.setdefault(project, asyncio.Lock())


def guard(ctx: "Context", project: str) -> contextlib.AbstractAsyncContextManager[Any]:
    """What a create holds from its checks to the reservation of its record: the
    project's lock when the project has limits that count its instances, else nothing
    (the record's create in KV is what refuses a duplicate name)."""
    if ctx.projects is None:
        return contextlib.nullcontext()
    config = ctx.projects.require(project).get("config", {})
    if any(k.startswith("limits.") and v != "" for k, v in config.items()):
        return lock(project)
    return contextlib.nullcontext()


def effective(ctx: "Context", project: str, kind: str) -> str:
    """The project whose ``kind`` (images, profiles) an instance of ``project`` uses
    (404 "Project not found" for an unknown project)."""
    if ctx.projects is None:
        return project
    return ctx.projects.effective(project, kind)


def _members(ctx: "Context", project: str) -> list[Instance]:
    return [Instance.of(r) for r in ctx.instances.cached()
            if r.get("project", "default") == project and r.get("status") != "Deleting"]


def creating(ctx: "Context", project: str, name: str, kind: str,
             config: Mapping[str, str], devices: Mapping[str, Mapping[str, str]]) -> None:
    """400 with LXD's message when a new instance (expanded config and devices) would
    break the project's limits or restrictions."""
    if ctx.projects is None:
        return
    p = ctx.projects.require(project)
    project_limits.check_create(project, p.get("config", {}),
                                Instance(name, kind, config, devices),
                                _members(ctx, project))


def updating(ctx: "Context", rec: Mapping[str, Any], config: Mapping[str, str],
             devices: Mapping[str, Mapping[str, str]]) -> None:
    """400 when the instance's new expanded config and devices would break its project's
    limits or restrictions (also for a profile change, tried on each instance using it)."""
    if ctx.projects is None:
        return
    project = rec.get("project", "default")
    p = ctx.projects.require(project)
    project_limits.check_update(project, p.get("config", {}),
                                Instance(rec["name"], rec.get("type") or "container",
                                         config, devices),
                                _members(ctx, project))


def snapshot_creation(ctx: "Context", project: str) -> None:
    """400 when ``project`` is restricted and does not allow snapshots
    (``restricted.snapshots``): for instance snapshots, taken by hand or on schedule."""
    if ctx.projects is None:
        return
    p = ctx.projects.require(project)
    project_limits.check_snapshot_creation(project, p.get("config", {}))
