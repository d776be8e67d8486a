"""``/1.0/networks/<network>/forwards[/<listen_address>]``: LXD's network forwards.

Each method is one bus verb of the network service (``forward_list``, ``forward_create``,
``forward_get``, ``forward_update``, ``forward_patch``, ``forward_delete``) carrying a
:class:`~shared.messages.network.ForwardRequest`.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from shared.messages.network import ForwardRequest
from shared.models import Reply

from .. import responses
from ..request import etag_of, json_object, name_of, project_of, recursion_of, requestor
from ..routing import Context


async def forward_request(request: web.Request) -> ForwardRequest:
    body = await json_object(request) if request.method in ("POST", "PUT", "PATCH") else None
    return ForwardRequest(project=project_of(request), network=name_of(request),
                          listen_address=request.match_info.get("address", ""),
                          recursion=recursion_of(request), body=body,
                          etag=etag_of(request), requestor=requestor(request))


async def created(_ctx: Context, request: web.Request, reply: Reply) -> web.StreamResponse:
    """201 with the new forward's ``Location``, as LXD answers the POST."""
    body = await json_object(request)
    resp = responses.sync(reply.metadata, status=201)
    resp.headers["Location"] = (f"/1.0/networks/{quote(name_of(request), safe='')}/forwards/"
                                f"{quote(str(body.get('listen_address')), safe='')}")
    return resp
