"""``/1.0/instances`` (and LXD's ``/1.0/containers`` aliases): one bus request per call.

Exec, files, console and logs routes are added by their own module; this one serves the
instance objects, their state and lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from shared.errors import BadRequest
from shared.messages.instance import StatePutRequest
from shared.models import ObjectRequest

if TYPE_CHECKING:
    from ..app import Gateway

PATHS: list[str] = []  # the generic list route in app.py already passes filter=
SVC = "instance"


def register(r: web.UrlDispatcher, gw: "Gateway") -> None:
    from ..app import project_of, read_json, recursion_of, requestor

    async def get(request: web.Request) -> web.Response:
        req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                            body={"recursion": recursion_of(request)},
                            requestor=requestor(request))
        return gw.render(await gw.ask(SVC, "get", req))

    async def state_get(request: web.Request) -> web.Response:
        req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                            requestor=requestor(request))
        return gw.render(await gw.ask(SVC, "state", req))

    def sub(verb: str):
        async def handler(request: web.Request) -> web.Response:
            req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                                requestor=requestor(request))
            return gw.render(await gw.ask(SVC, verb, req))
        return handler

    async def state_put(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("Invalid request body: expected a JSON object")
        try:
            req = StatePutRequest(project=project_of(request), name=request.match_info["name"],
                                  requestor=requestor(request), **{
                                      k: v for k, v in body.items()
                                      if k in ("action", "timeout", "force", "stateful")})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise BadRequest(f"Invalid state change: {'.'.join(map(str, err['loc']))}: "
                             f"{err['msg']} (action is one of start, stop, restart, "
                             "freeze, unfreeze)") from None
        return gw.render(await gw.ask(SVC, "state_put", req))

    for base in ("/1.0/instances", "/1.0/containers"):
        r.add_post(base, gw.creator(SVC, "create"))
        item = base + "/{name}"
        r.add_get(item, get)
        for method, verb in (("PUT", "update"), ("PATCH", "patch"), ("DELETE", "delete"),
                             ("POST", "rename")):
            r.add_route(method, item, gw.object(SVC, verb))
        r.add_get(item + "/state", state_get)
        r.add_put(item + "/state", state_put)
        r.add_get(item + "/snapshots", sub("snapshot_list"))
        r.add_get(item + "/backups", sub("backup_list"))
