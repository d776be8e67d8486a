"""The HTTP side of the gateway: LXD's REST API 1.0 on a unix socket.

Each route is one bus request (or a read of the operations bucket, which any gateway
replica may answer from). No business logic lives here: parse, ask, render.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import subjects, tracing
from shared.bus import Bus
from shared.config import Config
from shared.errors import BadRequest, CorralError
from shared.log import get_logger
from shared.models import (
    CreateRequest,
    ListRequest,
    Message,
    ObjectRequest,
    Reply,
    Requestor,
    ServerInfoRequest,
)
from shared.operations import Operations

from . import responses, routes

VERSION = "0.1.0"
# API extensions the gateway itself provides; services add theirs through their `info`.
GATEWAY_EXTENSIONS = ["operation_description", "event_lifecycle", "event_location",
                      "event_project", "event_lifecycle_requestor_address", "instances"]
# (path, owning service, verb) for the list endpoints.
LISTS = [
    ("/1.0/instances", "instance", "list"),
    ("/1.0/containers", "instance", "list"),
    ("/1.0/images", "image", "list"),
    ("/1.0/storage-pools", "storage", "list"),
    ("/1.0/networks", "network", "list"),
]
# Collections with full CRUD: (path, owning service, verb prefix). The verbs are
# <prefix>list|create|get|update|patch|delete|rename, one bus request each.
COLLECTIONS = [
    ("/1.0/profiles", "instance", "profile_"),
]
DEFAULT_EVENT_TYPES = ("logging", "operation", "lifecycle")
# Seconds the services' part of GET /1.0 is served from cache before a refresh.
INFO_TTL = 2.0

log = get_logger(component="gateway")


def requestor(request: web.Request) -> Requestor:
    return Requestor(username="root", protocol="unix", address="@")


def project_of(request: web.Request) -> str:
    return request.query.get("project", "default") or "default"


def recursion_of(request: web.Request) -> int:
    raw = request.query.get("recursion", "0")
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Invalid recursion value {raw!r}: expected 0, 1 or 2") from None


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; malformed JSON is a 400 a person can act on."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Invalid JSON in request body: {exc}") from None


class Gateway:
    def __init__(self, config: Config, bus: Bus, operations: Operations) -> None:
        self.config = config
        self.bus = bus
        self.ops = operations
        self.tracer = tracing.tracer("corral.gateway")
        self._expiry_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._info_cache: tuple[float, dict[str, Any], list[str]] | None = None
        self._info_refreshing = False
        self._info_by_service: dict[str, dict[str, Any]] = {}

    # -- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 ** 3)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/1.0", self.server)
        r.add_get("/1.0/", self.server)
        r.add_get("/1.0/operations", self.operations_list)
        r.add_get("/1.0/operations/{id}", self.operation_get)
        r.add_delete("/1.0/operations/{id}", self.operation_cancel)
        r.add_get("/1.0/operations/{id}/wait", self.operation_wait)
        r.add_get("/1.0/events", self.events)
        for path, svc, verb in LISTS:
            if not routes.overrides(path):
                r.add_get(path, self.lister(svc, verb))
        for path, svc, prefix in COLLECTIONS:
            self.collection(r, path, svc, prefix)
        # Each module of services/gateway/routes/ adds the routes of one resource.
        for module in routes.modules():
            module.register(r, self)
        return app

    def collection(self, r: web.UrlDispatcher, path: str, svc: str, prefix: str,
                   with_list: bool = True) -> None:
        """LXD's CRUD shape for ``path`` and ``path/{name}``, one bus verb per method."""
        if with_list:
            r.add_get(path, self.lister(svc, prefix + "list"))
        r.add_post(path, self.creator(svc, prefix + "create"))
        item = path + "/{name}"
        for method, verb in (("GET", "get"), ("PUT", "update"), ("PATCH", "patch"),
                             ("DELETE", "delete"), ("POST", "rename")):
            r.add_route(method, item, self.object(svc, prefix + verb))

    def creator(self, svc: str, verb: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise BadRequest("Invalid request body: expected a JSON object")
            req = CreateRequest(project=project_of(request), body=body,
                                requestor=requestor(request))
            return self.render(await self.ask(svc, verb, req))
        return handler

    def object(self, svc: str, verb: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = None
            if request.method in ("PUT", "PATCH", "POST"):
                body = await read_json(request)
                if not isinstance(body, dict):
                    raise BadRequest("Invalid request body: expected a JSON object")
            req = ObjectRequest(project=project_of(request), name=request.match_info["name"],
                                body=body, etag=request.headers.get("If-Match"),
                                requestor=requestor(request))
            return self.render(await self.ask(svc, verb, req))
        return handler

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        ctx = tracing.extract(request.headers)
        name = f"{request.method} {request.match_info.route.resource.canonical if request.match_info.route.resource else request.path}"  # noqa: E501
        with self.tracer.start_as_current_span(name, context=ctx, kind=SpanKind.SERVER) as span:
            span.set_attribute("http.method", request.method)
            span.set_attribute("http.target", request.path_qs)
            trace_id = tracing.current_trace_id() or ""
            try:
                resp = await handler(request)
            except CorralError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.message))
                resp = responses.error(exc.code, exc.message)
            except web.HTTPNotFound:
                resp = responses.error(404, "not found")
            except web.HTTPMethodNotAllowed:
                resp = responses.error(501, "not implemented")
            except web.HTTPException:
                raise
            except Exception as exc:
                span.record_exception(exc)
                log.exception("request crashed", path=request.path)
                resp = responses.error(500, f"Internal error in the gateway: {exc}")
            if not resp.prepared:
                resp.headers["X-Corral-Trace-Id"] = trace_id
                span.set_attribute("http.status_code", resp.status)
            return resp

    async def ask(self, svc: str, verb: str, req: Message) -> Reply:
        return await self.bus.request(svc, verb, req)

    def render(self, reply: Reply) -> web.Response:
        if reply.type == "async" and reply.operation:
            return responses.async_(reply.operation)
        return responses.sync(reply.metadata, etag=reply.etag)

    # -- routes ---------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return responses.sync(["/1.0"])

    async def _service_info(self) -> tuple[dict[str, Any], list[str]]:
        """What the services add to ``GET /1.0``, cached for a few seconds.

        ``lxc`` calls ``GET /1.0`` before nearly every command: asking five services each
        time would make it the slowest call of all. A stale answer is refreshed in the
        background; a service that has never answered is asked again on every call (so a
        client right after start-up does not see its extensions missing for seconds); a
        service that is down contributes what it said last, or nothing.
        """
        now = time.monotonic()
        if self._info_cache is None or len(self._info_by_service) < len(subjects.SERVICES):
            await self._refresh_info()
        elif now - self._info_cache[0] > INFO_TTL and not self._info_refreshing:
            self._info_refreshing = True
            asyncio.create_task(self._refresh_info())
        assert self._info_cache is not None
        return self._info_cache[1], self._info_cache[2]

    async def _refresh_info(self) -> None:
        try:
            replies = await asyncio.gather(
                *(self.bus.request(svc, "info", ServerInfoRequest(), timeout=1.0)
                  for svc in subjects.SERVICES), return_exceptions=True)
            for svc, reply in zip(subjects.SERVICES, replies, strict=True):
                # A service that is busy or restarting keeps what it said last time: an
                # API extension must not vanish for a moment (`lxc list` refuses to run
                # without `api_filtering`, which the instance service declares).
                if isinstance(reply, Reply):
                    self._info_by_service[svc] = reply.metadata or {}
            env: dict[str, Any] = {}
            extensions = list(GATEWAY_EXTENSIONS)
            for info in self._info_by_service.values():
                env.update(info.get("environment", {}))
                extensions += [e for e in info.get("api_extensions", [])
                               if e not in extensions]
            self._info_cache = (time.monotonic(), env, extensions)
        finally:
            self._info_refreshing = False

    def invalidate_info(self) -> None:
        self._info_cache = None

    async def server(self, request: web.Request) -> web.Response:
        """``GET /1.0``: answers even when a service is down (the CLI calls it first)."""
        env, extensions = await self._service_info()
        uname = platform.uname()
        environment = {
            "addresses": [],
            "architectures": [uname.machine],
            "certificate": "",
            "certificate_fingerprint": "",
            "driver": "",
            "driver_version": "",
            "firewall": "nftables",
            "kernel": uname.system,
            "kernel_architecture": uname.machine,
            "kernel_features": {},
            "kernel_version": uname.release,
            "lxc_features": {},
            "os_name": _os_release().get("NAME", "Linux"),
            "os_version": _os_release().get("VERSION_ID", ""),
            "project": project_of(request),
            "server": "corral",
            "server_clustered": False,
            "server_event_mode": "full-mesh",
            "server_name": self.config.node,
            "server_pid": os.getpid(),
            "server_version": VERSION,
            "storage": "",
            "storage_version": "",
            "storage_supported_drivers": [],
        }
        environment.update(env)
        return responses.sync({
            "config": {},
            "api_extensions": extensions,
            "api_status": "stable",
            "api_version": "1.0",
            "auth": "trusted",
            "public": False,
            "auth_methods": ["tls"],
            "environment": environment,
        })

    def lister(self, svc: str, verb: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            req = ListRequest(project=project_of(request), recursion=recursion_of(request),
                              filter=request.query.get("filter") or None,
                              all_projects=request.query.get("all-projects") == "true",
                              requestor=requestor(request))
            return self.render(await self.ask(svc, verb, req))
        return handler

    async def operations_list(self, request: web.Request) -> web.Response:
        recursion = recursion_of(request)
        project = None if request.query.get("all-projects") == "true" else project_of(request)
        ops = await self.ops.list(project)
        grouped: dict[str, list[Any]] = {}
        for op in sorted(ops, key=lambda o: o["created_at"]):
            key = op["status"].lower()
            grouped.setdefault(key, []).append(
                op if recursion > 0 else f"/1.0/operations/{op['id']}")
        return responses.sync(grouped)

    async def operation_get(self, request: web.Request) -> web.Response:
        return responses.sync(await self.ops.get(request.match_info["id"]))

    async def operation_cancel(self, request: web.Request) -> web.Response:
        await self.ops.cancel(request.match_info["id"])
        return responses.sync(None)

    async def operation_wait(self, request: web.Request) -> web.Response:
        raw = request.query.get("timeout", "-1")
        try:
            timeout = float(raw)
        except ValueError:
            raise BadRequest(f"Invalid timeout {raw!r}: expected seconds, -1 for no limit"
                             ) from None
        return responses.sync(await self.ops.wait(request.match_info["id"], timeout))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``/1.0/events``: a websocket of LXD event JSON, filtered by type and project."""
        types = {t for t in request.query.get("type", "").split(",") if t} or set(
            DEFAULT_EVENT_TYPES)
        all_projects = request.query.get("all-projects") == "true"
        project = project_of(request)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10000)

        async def on_event(msg: Any) -> None:
            parts = msg.subject.split(".")  # corral.events.<type>.<project>.<entity>
            if len(parts) < 5 or parts[2] not in types:
                return
            if not all_projects and parts[3] != subjects.token(project):
                return
            try:
                queue.put_nowait(msg.data)
            except asyncio.QueueFull:  # a stuck client must not stall the gateway
                pass

        sub = await self.bus.subscribe(subjects.EVENTS_ALL, on_event)

        async def pump() -> None:
            while True:
                data = await queue.get()
                await ws.send_str(data.decode())

        pumper = asyncio.create_task(pump())
        try:
            async for msg in ws:  # LXD clients send nothing; we wait for the close
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            pumper.cancel()
            await sub.unsubscribe()
        return ws

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        path = self.config.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(path))
        await site.start()
        os.chmod(path, 0o660)
        self._expiry_task = asyncio.create_task(self._expire_loop())
        log.info("gateway listening", socket=str(path))

    async def stop(self) -> None:
        if self._expiry_task:
            self._expiry_task.cancel()
        if self._runner:
            await self._runner.cleanup()
        self.config.socket_path.unlink(missing_ok=True)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self.ops.retention / 2)))
            try:
                await self.ops.expire()
            except Exception as exc:  # bus down for a moment: try again next round
                log.debug("operation expiry skipped", error=str(exc))


_OS: dict[str, str] = {}


def _os_release() -> dict[str, str]:
    if not _OS:
        try:
            for line in open("/etc/os-release"):
                k, _, v = line.strip().partition("=")
                _OS[k] = v.strip('"')
        except OSError:
            _OS["NAME"] = "Linux"
    return _OS
