"""How the gateway routes: one table of (method, path) -> handler, most of them one bus request.

``routes/__init__.py`` holds the table, the one place that lists every HTTP path. A row is
either ``ask(service, verb, build)``, meaning "build this request message from the HTTP
request, send it to ``corral.<service>.<verb>``, answer with LXD's envelope", or a
function of a ``routes/`` module for what is more than that (uploads, exports, raw file
bodies, websockets, the operations bucket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import nats.errors
from aiohttp import web

from shared.bus import Bus
from shared.config import Config
from shared.errors import CorralError
from shared.messages.lxd import check_body
from shared.models import CreateRequest, ListRequest, Message, ObjectRequest, Reply
from shared.operations import Operations

from . import projects, responses
from .placement import Placement
from .request import (
    all_projects,
    etag_of,
    json_object,
    name_of,
    project_of,
    recursion_of,
    requestor,
)

if TYPE_CHECKING:
    from .info import ServerInfo


@dataclass
class Context:
    """What route handlers may use: the gateway's bus, config, operations and caches."""

    config: Config
    bus: Bus
    ops: Operations
    info: "ServerInfo"
    remote: Any = None  # the RemoteAPI (server config, trust store), set by the Gateway
    placement: Placement | None = None  # in a cluster: which node answers (placement.py)

    async def ask(self, svc: str, verb: str, req: Message, timeout: float | None = None,
                  target: str | None = None) -> Reply:
        """Send ``req`` to ``corral.<svc>.<verb>``; a JSON body it carries is checked
        against LXD's shape for that verb first (``shared.messages.lxd``): every route's
        body passes here, so a new route is checked without a line of its own."""
        body = getattr(req, "body", None)
        if isinstance(body, dict):
            req.body = check_body(svc, verb, body)  # type: ignore[attr-defined]
        node = None
        if svc == "instance" and self.config.cluster:  # its node, wherever it arrived
            if self.placement is None:
                self.placement = Placement(self.bus, self.config)
            node = await self.placement.node_for(verb, req, target)
        try:
            return await self.bus.request(svc, verb, req, node=node, timeout=timeout)
        except CorralError as exc:
            if node is None or self.placement is None:
                raise
            raise self.placement.unreachable(node, verb, exc) from None
        except nats.errors.MaxPayloadError:
            limit = self.bus.nc.max_payload if self.bus.nc else 0
            raise CorralError(f"Request too large: a {svc} request carries at most {limit} "
                              "bytes (NATS max_payload); LXD objects are far smaller",
                              413) from None


Handler = Callable[[Context, web.Request], Awaitable[web.StreamResponse]]
Build = Callable[[web.Request], Awaitable[Message]]
Render = Callable[[Context, web.Request, Reply], Awaitable[web.StreamResponse]]


def render(reply: Reply) -> web.Response:
    """LXD's envelope for a service's reply: 202 + Location for an operation, else sync."""
    if reply.type == "async" and reply.operation:
        return responses.async_(reply.operation)
    return responses.sync(reply.metadata, etag=reply.etag)


async def _render(_ctx: Context, _request: web.Request, reply: Reply) -> web.StreamResponse:
    return render(reply)


@dataclass(frozen=True)
class Ask:
    """A route that is exactly one bus request: build the message, ask, render the reply."""

    service: str
    verb: str
    build: Build
    timeout: float | None = None  # seconds; None: the configured request timeout
    respond: Render = _render

    async def __call__(self, ctx: Context, request: web.Request) -> web.StreamResponse:
        req = await self.build(request)
        timeout = max(self.timeout, ctx.config.request_timeout) if self.timeout else None
        return await self.respond(ctx, request, await ctx.ask(self.service, self.verb, req,
                                                              timeout=timeout))


def ask(service: str, verb: str, build: Build, *, timeout: float | None = None,
        respond: Render = _render) -> Ask:
    return Ask(service, verb, build, timeout, respond)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler


def aliased(routes: list[Route], prefix: str, alias: str) -> list[Route]:
    """``routes`` again under ``alias`` (LXD serves ``/1.0/containers`` like instances)."""
    return [*routes, *(Route(r.method, alias + r.path.removeprefix(prefix), r.handler)
                       for r in routes if r.path.startswith(prefix))]


def bind(handler: Handler, ctx: Context) -> Callable[[web.Request], Awaitable[
        web.StreamResponse]]:
    """``handler`` as aiohttp calls it (a coroutine function of the request); the table's
    handler stays readable as ``.route_handler`` (tests check where a URL leads)."""
    async def bound(request: web.Request) -> web.StreamResponse:
        await projects.resolve(ctx.bus, request)  # 404 for an unknown ?project=
        return await handler(ctx, request)

    bound.route_handler = handler  # type: ignore[attr-defined]
    return bound


def mount(router: web.UrlDispatcher, ctx: Context, routes: list[Route]) -> None:
    """Add ``routes`` in order (a literal segment must come before a ``{name}`` one).

    A GET also answers HEAD (headers only), as aiohttp's ``add_get`` does, unless the table
    gives that path a HEAD of its own.
    """
    own_head = {r.path for r in routes if r.method == "HEAD"}
    for r in routes:
        handler = bind(r.handler, ctx)
        if r.method == "GET":
            router.add_get(r.path, handler, allow_head=r.path not in own_head)
        else:
            router.add_route(r.method, r.path, handler)


# -- request messages built from the HTTP request ----------------------------------------

async def listing(request: web.Request) -> ListRequest:
    """``GET /1.0/<collection>``: recursion, LXD's ``filter=`` and ``all-projects``."""
    return ListRequest(project=project_of(request), recursion=recursion_of(request),
                       filter=request.query.get("filter") or None,
                       all_projects=all_projects(request), requestor=requestor(request))


async def creation(request: web.Request) -> CreateRequest:
    """``POST /1.0/<collection>``: the JSON object as the client sent it."""
    return CreateRequest(project=project_of(request), body=await json_object(request),
                         target=request.query.get("target") or None,
                         requestor=requestor(request))


async def item(request: web.Request) -> ObjectRequest:
    """One named object; PUT, PATCH and POST (rename) carry a JSON object, and If-Match."""
    body = await json_object(request) if request.method in ("PUT", "PATCH", "POST") else None
    return ObjectRequest(project=project_of(request), name=name_of(request), body=body,
                         etag=etag_of(request), target=request.query.get("target") or None,
                         requestor=requestor(request))
