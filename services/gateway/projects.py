"""``?project=`` on every route: 404 for an unknown project, and the effective project.

Why in the gateway: every service takes the project from the request, but only the
instance service knows projects (it owns them, see services/instance/projects.py). Asking
it once here, for requests that name a project other than ``default``, gives every route
LXD's "Project not found" and lets the image and profile routes work on the project whose
objects the named one uses (its own with ``features.images`` / ``features.profiles``,
else ``default``'s, as LXD), without each service asking again. Answers are kept for a
moment: ``lxc`` sends several requests per command.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from shared.bus import Bus
from shared.errors import NotFound
from shared.models import ObjectRequest

KEY = web.RequestKey("corral.project", str)
TTL = 2.0
# Route prefix -> the feature that decides which project's objects it works on.
FEATURE_OF_PREFIX = (("/1.0/images", "features.images"),
                     ("/1.0/profiles", "features.profiles"))
_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "on")


async def project_record(bus: Bus, name: str) -> dict[str, Any]:
    """The project as the instance service shows it (cached ``TTL`` seconds); 404 when
    there is no such project."""
    hit = _cache.get(name)
    now = time.monotonic()
    if hit is not None and now - hit[0] < TTL:
        return hit[1]
    try:
        reply = await bus.request("instance", "project_get", ObjectRequest(name=name))
    except NotFound:
        _cache.pop(name, None)
        raise NotFound("Project not found") from None
    _cache[name] = (now, reply.metadata)
    return reply.metadata


def effective(record: dict[str, Any], path: str) -> str:
    """The project a request on ``path`` works in for the project ``record``."""
    for prefix, feature in FEATURE_OF_PREFIX:
        if path.startswith(prefix) and not _true(record.get("config", {}).get(feature)):
            return "default"
    return record["name"]


async def resolve(bus: Bus, request: web.Request) -> None:
    """Check ``?project=`` and remember the effective project on the request
    (:func:`.request.project_of` reads it)."""
    name = request.query.get("project") or "default"
    if name == "default" or request.path.startswith("/1.0/projects"):
        return
    request[KEY] = effective(await project_record(bus, name), request.path)
