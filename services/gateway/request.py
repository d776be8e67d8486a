"""What a route reads from an HTTP request: project, recursion, body, requestor...

One module for these so every route reads them the same way, and bad input gets the
same actionable 400 whichever path it came through.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from shared.errors import BadRequest
from shared.models import Requestor

from . import bodies, projects

# Bodies above this many bytes are decoded in a worker thread, not on the event loop.
_DECODE_INLINE_MAX = 256 * 1024
_PARSED = web.RequestKey("corral.json_body", object)


def requestor(request: web.Request) -> Requestor:
    """Who asked, for lifecycle events: root on the unix socket (as LXD's); over HTTPS the
    client certificate's fingerprint and address (the identity trust.py's middleware
    put on the request)."""
    who = request.get("corral.identity")
    if who is not None:
        return who.requestor()
    return Requestor(username="root", protocol="unix", address="@")


def project_of(request: web.Request) -> str:
    """The project a route works in: the effective one once :mod:`.projects` resolved
    ``?project=`` (images and profiles of a project without those features are
    ``default``'s), else the query's."""
    return request.get(projects.KEY) or request.query.get("project", "default") or "default"


def all_projects(request: web.Request) -> bool:
    return request.query.get("all-projects") == "true"


def recursion_of(request: web.Request) -> int:
    """LXD's ``recursion``: 0, 1 or 2 (anything else would reach services as a number
    they do not expect, or one the bus cannot carry)."""
    raw = request.query.get("recursion", "0").strip() or "0"
    if raw not in ("0", "1", "2"):
        raise BadRequest(f"Invalid recursion value {raw[:40]!r}: expected 0, 1 or 2")
    return int(raw)


def name_of(request: web.Request, key: str = "name") -> str:
    return request.match_info[key]


def etag_of(request: web.Request) -> str | None:
    """The client's ``If-Match`` (compare-and-set on the object's ETag)."""
    return request.headers.get("If-Match")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON within :mod:`.bodies`' bounds; malformed JSON is a 400 a
    person can act on. The body's size is bounded before this (``limits``); it is decoded
    once per request (a route's reply may read it again)."""
    if _PARSED in request:
        return request[_PARSED]
    raw = await request.read()
    if len(raw) > _DECODE_INLINE_MAX:
        value = await asyncio.to_thread(bodies.decode, raw)
    else:
        value = bodies.decode(raw)
    request[_PARSED] = value
    return value


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, which every LXD write takes."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body: expected a JSON object")
    return body
