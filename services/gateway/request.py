"""What a route reads from an HTTP request: project, recursion, body, requestor...

One module for these so every route reads them the same way, and bad input gets the
same actionable 400 whichever path it came through.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shared.errors import BadRequest
from shared.models import Requestor


def requestor(request: web.Request) -> Requestor:
    """Who asked, for lifecycle events (the unix socket is root's, as LXD's)."""
    return Requestor(username="root", protocol="unix", address="@")


def project_of(request: web.Request) -> str:
    return request.query.get("project", "default") or "default"


def all_projects(request: web.Request) -> bool:
    return request.query.get("all-projects") == "true"


def recursion_of(request: web.Request) -> int:
    raw = request.query.get("recursion", "0")
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Invalid recursion value {raw!r}: expected 0, 1 or 2") from None


def name_of(request: web.Request, key: str = "name") -> str:
    return request.match_info[key]


def etag_of(request: web.Request) -> str | None:
    """The client's ``If-Match`` (compare-and-set on the object's ETag)."""
    return request.headers.get("If-Match")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; malformed JSON is a 400 a person can act on."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Invalid JSON in request body: {exc}") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, which every LXD write takes."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body: expected a JSON object")
    return body
