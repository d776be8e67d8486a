"""``/1.0/projects`` as a restricted certificate sees it: only the projects it lists.

Why here: the instance service owns projects but knows nothing of HTTPS clients; the
gateway's trust check (trust.py) sees the route, not the project named in its path.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from shared.errors import Forbidden
from shared.models import Reply

from ..routing import Context, render
from ..trust import identity_of


def _name(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("name", ""))
    return unquote(urlsplit(str(item)).path.rsplit("/", 1)[-1])


async def listed(_ctx: Context, request: web.Request, reply: Reply) -> web.StreamResponse:
    """The list, less the projects a restricted client may not reach."""
    who = identity_of(request)
    if who.restricted and isinstance(reply.metadata, list):
        reply.metadata = [p for p in reply.metadata if _name(p) in who.projects]
    return render(reply)


async def shown(_ctx: Context, request: web.Request, reply: Reply) -> web.StreamResponse:
    """One project (or its state): 403 for a restricted client outside it."""
    who = identity_of(request)
    if who.restricted and request.match_info["name"] not in who.projects:
        raise Forbidden("Certificate is restricted and not allowed in project "
                        f"{request.match_info['name']!r}")
    return render(reply)
