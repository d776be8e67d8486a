"""``/1.0/storage-pools``: pools (CRUD + resources) and their volume listings.

As LXD, every pool call is sync (create/update/delete reply with empty metadata once the
work is done), so the slow ones (mkfs, mount, delete) get a longer bus timeout than the
default instead of an operation the stock 5.0 client would not wait for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from shared.errors import BadRequest
from shared.messages.storage import VolumeGetRequest, VolumeListRequest
from shared.models import CreateRequest, ListRequest, Message, ObjectRequest

from ..app import project_of, read_json, recursion_of, requestor

if TYPE_CHECKING:
    from ..app import Gateway

PATHS = ["/1.0/storage-pools"]
POOLS = "/1.0/storage-pools"
SLOW = 120.0  # seconds: formatting and mounting a pool, deleting one full of volumes

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body: expected a JSON object")
    return body


def register(r: web.UrlDispatcher, gw: "Gateway") -> None:
    async def ask(verb: str, req: Message, slow: bool = False) -> web.Response:
        timeout = max(SLOW, gw.config.request_timeout) if slow else None
        return gw.render(await gw.bus.request("storage", verb, req, timeout=timeout))

    async def list_pools(request: web.Request) -> web.Response:
        return await ask("list", ListRequest(project=project_of(request),
                                             recursion=recursion_of(request),
                                             requestor=requestor(request)))

    async def create_pool(request: web.Request) -> web.Response:
        req = CreateRequest(project=project_of(request), body=await _body(request),
                            requestor=requestor(request))
        return await ask("create", req, slow=True)

    def pool(verb: str, with_body: bool = False, slow: bool = False) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                                body=await _body(request) if with_body else None,
                                etag=request.headers.get("If-Match"),
                                requestor=requestor(request))
            return await ask(verb, req, slow=slow)
        return handler

    async def list_volumes(request: web.Request) -> web.Response:
        req = VolumeListRequest(pool=request.match_info["name"],
                                kind=request.match_info.get("kind"),
                                project=project_of(request), recursion=recursion_of(request),
                                all_projects=request.query.get("all-projects") == "true",
                                requestor=requestor(request))
        return await ask("volume_list", req)

    async def get_volume(request: web.Request) -> web.Response:
        req = VolumeGetRequest(pool=request.match_info["name"],
                               kind=request.match_info["kind"],
                               name=request.match_info["volume"],
                               project=project_of(request), requestor=requestor(request))
        return await ask("volume_get", req)

    item = POOLS + "/{name}"
    r.add_get(POOLS, list_pools)
    r.add_post(POOLS, create_pool)
    r.add_get(item, pool("get"))
    r.add_put(item, pool("update", with_body=True, slow=True))
    r.add_patch(item, pool("patch", with_body=True, slow=True))
    r.add_delete(item, pool("delete", slow=True))
    r.add_get(item + "/resources", pool("resources"))
    r.add_get(item + "/volumes", list_volumes)
    r.add_get(item + "/volumes/{kind}", list_volumes)
    r.add_get(item + "/volumes/{kind}/{volume}", get_volume)
