"""``POST /1.0/images/<fp>/refresh`` (``lxc image refresh``): image.refresh.

Rows of the gateway's route table, before IMAGES' rows.
"""

from __future__ import annotations

from aiohttp import web

from shared.messages.image import RefreshRequest

from ..request import name_of, project_of, requestor
from ..routing import Route, ask


async def _refresh(request: web.Request) -> RefreshRequest:
    """The image by fingerprint (prefix); LXD's refresh takes no body."""
    return RefreshRequest(project=project_of(request), fingerprint=name_of(request),
                          requestor=requestor(request))


ROUTES: list[Route] = [
    Route("POST", "/1.0/images/{name}/refresh", ask("image", "refresh", _refresh)),
]
