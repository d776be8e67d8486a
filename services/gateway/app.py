"""The HTTP side of the gateway: LXD's REST API 1.0 on a unix socket.

The routes are one table (``routes/__init__.py``); each is one bus request, or a read of
the operations bucket, which any gateway replica may answer from. No business logic lives
here: parse, ask, render. This module holds what surrounds every route: the error
envelope, tracing, the socket and the sweep of expired operations.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import tracing
from shared.bus import Bus
from shared.config import Config, env_seconds
from shared.errors import CorralError
from shared.log import get_logger
from shared.operations import Operations

from . import responses
from .info import ServerInfo
from .limits import body_limit, max_body_size
from .membership import Membership
from .remote import RemoteAPI
from .routes import ROUTES
from .routes.server import VERSION
from .routing import Context, mount
from .scrub import scrub

__all__ = ["VERSION", "Gateway"]

log = get_logger(component="gateway")


class Gateway:
    def __init__(self, config: Config, bus: Bus, operations: Operations) -> None:
        self.ctx = Context(config=config, bus=bus, ops=operations, info=ServerInfo(bus))
        self.ctx.remote = RemoteAPI(self.ctx)  # server config, HTTPS listener, trust
        self.tracer = tracing.tracer("corral.gateway")
        self._expiry_task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.membership = Membership(config, bus)  # cluster heartbeats (cluster mode only)

    def app(self) -> web.Application:
        limit = max_body_size()
        app = web.Application(middlewares=[self._middleware, self.ctx.remote.middleware,
                                           body_limit(limit)],
                              client_max_size=limit)
        mount(app.router, self.ctx, ROUTES)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        ctx = tracing.extract(request.headers)
        resource = request.match_info.route.resource
        name = f"{request.method} {resource.canonical if resource else request.path}"
        with self.tracer.start_as_current_span(name, context=ctx, kind=SpanKind.SERVER) as span:
            if span.is_recording():  # attributes only where a span goes somewhere
                span.set_attribute("http.method", request.method)
                span.set_attribute("http.target", request.path_qs)
            trace_id = tracing.current_trace_id() or ""
            try:
                resp = await handler(request)
            except CorralError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.message))
                resp = responses.error(exc.code, scrub(exc.message, self.ctx.config.dir))
            except web.HTTPNotFound:
                resp = responses.error(404, "not found")
            except web.HTTPMethodNotAllowed:
                resp = responses.error(501, "not implemented")
            except web.HTTPException:
                raise
            except Exception as exc:
                span.record_exception(exc)
                log.exception("request crashed", path=request.path)
                resp = responses.error(500, scrub(f"Internal error in the gateway: {exc}",
                                                  self.ctx.config.dir))
            if not resp.prepared:
                resp.headers["X-Corral-Trace-Id"] = trace_id
                span.set_attribute("http.status_code", resp.status)
            return resp

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        path = self.ctx.config.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        # At stop, requests and websockets still open (an `lxc monitor`, an exec) get this
        # long to end before they are cut (aiohttp's 60 s by default; the test stacks,
        # which stop the gateway often, 1 s: a test's open monitor held each stop 10 s)
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False,
            shutdown_timeout=env_seconds("CORRAL_SHUTDOWN_TIMEOUT", 60.0, 0.1))
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(path))
        await site.start()
        os.chmod(path, 0o660)
        await self.ctx.remote.start(self._runner)  # socket group, the HTTPS site if set
        self._expiry_task = asyncio.create_task(self._expire_loop())
        await self.membership.start()
        if self.ctx.config.cluster:  # moves a dead gateway of this member left (move_journal)
            self._recovery = asyncio.create_task(self._recover_moves())
        log.info("gateway listening", socket=str(path))

    async def _recover_moves(self) -> None:
        from .cluster_move import mover_of
        from .move_journal import Recovery
        from .vm_live_move import recover
        mover = mover_of(self.ctx)
        await Recovery(mover, mover.journal, self.ctx.config.node, recover).run()

    async def stop(self) -> None:
        if self._expiry_task:
            self._expiry_task.cancel()
        if self._recovery is not None:
            self._recovery.cancel()
        await self.membership.stop()
        await self.ctx.remote.stop()
        if self._runner:
            await self._runner.cleanup()
        self.ctx.config.socket_path.unlink(missing_ok=True)

    async def _expire_loop(self) -> None:
        """Every 2 s fail operations whose owner process is gone (so waiting clients get an
        error, not a hang); every ``retention / 2`` s drop expired ones."""
        ops = self.ctx.ops
        every = max(1.0, min(30.0, ops.retention / 2))
        last = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            try:
                await ops.fail_orphans()
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    await ops.expire()
            except Exception as exc:  # bus down for a moment: try again next round
                log.debug("operation sweep skipped", error=str(exc))
