"""``/1.0/networks``: LXD's network API, one bus request per call to the network service."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from shared.errors import BadRequest
from shared.models import CreateRequest, ObjectRequest

from .. import responses

if TYPE_CHECKING:
    from ..app import Gateway

PATHS = ["/1.0/networks"]
SVC = "network"


def register(r: web.UrlDispatcher, gw: "Gateway") -> None:
    from ..app import project_of, read_json, requestor

    async def create(request: web.Request) -> web.Response:
        """LXD answers a network create with 201 and the new network's Location."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("Invalid request body: expected a JSON object")
        req = CreateRequest(project=project_of(request), body=body,
                            requestor=requestor(request))
        reply = await gw.ask(SVC, "create", req)
        resp = responses.sync(reply.metadata, status=201)
        resp.headers["Location"] = f"/1.0/networks/{quote(str(body.get('name')), safe='')}"
        return resp

    def sub(verb: str):
        async def handler(request: web.Request) -> web.Response:
            req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                                requestor=requestor(request))
            return gw.render(await gw.ask(SVC, verb, req))
        return handler

    r.add_get("/1.0/networks", gw.lister(SVC, "list"))
    r.add_post("/1.0/networks", create)
    for method, verb in (("GET", "get"), ("PUT", "update"), ("PATCH", "patch"),
                         ("DELETE", "delete"), ("POST", "rename")):
        r.add_route(method, "/1.0/networks/{name}", gw.object(SVC, verb))
    r.add_get("/1.0/networks/{name}/state", sub("state"))
    r.add_get("/1.0/networks/{name}/leases", sub("leases"))
