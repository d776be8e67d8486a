"""What ``/1.0/networks`` does beyond the generic routes: LXD answers a create with 201."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from shared.models import Reply

from .. import responses
from ..request import json_object
from ..routing import Context


async def created(_ctx: Context, request: web.Request, reply: Reply) -> web.StreamResponse:
    """201 with the new network's ``Location``, as LXD answers ``POST /1.0/networks``."""
    body = await json_object(request)  # aiohttp keeps the body: this is no second read
    resp = responses.sync(reply.metadata, status=201)
    resp.headers["Location"] = f"/1.0/networks/{quote(str(body.get('name')), safe='')}"
    return resp
