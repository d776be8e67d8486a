"""The service base: a NATS micro service declared in one place.

A service subclass sets ``name``/``version`` and marks its handlers with
:func:`endpoint`; the base registers them with ``nats.micro`` (so ``$SRV.PING``, ``INFO``
and ``STATS`` see them), decodes requests into their pydantic model, continues the caller's
trace, and turns :class:`CorralError` into a micro error reply carrying the HTTP-like code.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, ClassVar, Coroutine, NoReturn

from nats import micro
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointStats
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from . import codec, metrics, subjects, tracing
from .bus import HOST_BOUND, Bus, bus_error
from .config import Config, get_config
from .errors import BadRequest, CorralError, Forbidden
from .events import Events, ensure_stream
from .log import get_logger, set_event_sink, setup_logging
from .models import Message, Reply, ServerInfoReply, ServerInfoRequest  # noqa: F401
from .operations import Operations


@dataclass
class EndpointFigures:
    """What one endpoint's requests took, counted when each one ends (see ``_stats``)."""

    completed: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str = ""
    in_flight: int = 0

    def done(self, elapsed_ns: int, error: str | None) -> None:
        self.in_flight -= 1
        self.completed += 1
        self.processing_ns += elapsed_ns
        if error is not None:
            self.errors += 1
            self.last_error = error


@dataclass(frozen=True)
class EndpointSpec:
    verb: str
    request: type[Message]
    scope: str  # "cluster": corral.<svc>.<verb>; "node": corral.node.<node>.<svc>.<verb>
    attr: str


def endpoint(verb: str, request: type[Message], scope: str = "cluster"
             ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Mark a coroutine method as the handler of ``verb``."""
    if scope not in ("cluster", "node"):
        raise ValueError(scope)

    def mark(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        fn.__corral_endpoint__ = (verb, request, scope)  # type: ignore[attr-defined]
        return fn

    return mark


# How many requests one service process works on at once before it answers 503: a flood
# (hundreds of launches, a client stuck in a loop) is refused at the door, with a reason,
# instead of queueing without end and timing out every caller. CORRAL_MAX_IN_FLIGHT
# overrides it (per process).
MAX_IN_FLIGHT = 256
# Threads of each process's default pool (asyncio.to_thread); see run_services.
DEFAULT_WORKERS = 32
# Header of a request one cluster node forwarded to another (see ``Service.node_of``):
# forwarded once at most, so two nodes that disagree cannot bounce it between them.
FORWARDED = "Corral-Forwarded-By"
# Seconds a forwarded request may take on the node that answers it.
FORWARD_TIMEOUT = 60.0


class Service:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""

    def __init__(self, config: Config | None = None, bus: Bus | None = None) -> None:
        self.config = config or get_config()
        self._own_bus = bus is None
        self.bus = bus or Bus(self.config, self.name)
        self.log = get_logger(component=self.name)
        # LXD says "none" for the location of a standalone server; a cluster names nodes.
        location = self.config.node if self.config.cluster else "none"
        self.events = Events(self.bus, location=location)
        self.operations = Operations(self.bus, self.events, location=location)
        self._micro: micro.Service | None = None
        self._stopped = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.max_in_flight = int(os.environ.get("CORRAL_MAX_IN_FLIGHT") or MAX_IN_FLIGHT)
        self._figures: dict[str, EndpointFigures] = {}

    @classmethod
    def endpoints(cls) -> list[EndpointSpec]:
        specs = []
        for attr in dir(cls):
            marker = getattr(getattr(cls, attr, None), "__corral_endpoint__", None)
            if marker:
                verb, request, scope = marker
                specs.append(EndpointSpec(verb, request, scope, attr))
        return sorted(specs, key=lambda s: s.verb)

    def on_node(self, spec: EndpointSpec) -> bool:
        """Answered on this node's subject: a node-scoped verb, or in a cluster every verb
        of a host-bound service (instances, volumes, bridges live on one node)."""
        return spec.scope == "node" or (self.config.cluster and self.name in HOST_BOUND)

    def subject_for(self, spec: EndpointSpec) -> str:
        if self.on_node(spec):
            return subjects.node(self.config.node, self.name, spec.verb)
        return subjects.service(self.name, spec.verb)

    # -- hooks for subclasses ------------------------------------------------------------

    async def setup(self) -> None:
        """Open stores, reconcile with the host. Runs before endpoints are registered."""

    async def teardown(self) -> None:
        """Release what setup took (not the host objects: those outlive the process)."""

    async def node_of(self, verb: str, body: Any) -> str | None:
        """In a cluster: the node that must answer this request when it is not this one
        (the instance service names the node an instance is located on); it is forwarded
        there. Why: a client naming no node (the corral CLI, a run hook, another service)
        reaches any node, and the request must still be served where its object is."""
        return None

    def server_info(self) -> ServerInfoReply:
        """What this service adds to ``GET /1.0`` (drivers, storage, extensions)."""
        return ServerInfoReply()

    @endpoint("info", ServerInfoRequest)
    async def _info(self, _req: ServerInfoRequest) -> Reply:
        return Reply(metadata=self.server_info().model_dump())

    async def metrics_text(self) -> str:
        """What this service measures beyond the process's registry (Prometheus text)."""
        return ""

    @endpoint("metrics", Message)
    async def _metrics(self, _req: Message) -> Reply:
        """This process's metrics (``shared/metrics.py``) and the service's own, as
        Prometheus text: the gateway merges every service's into ``GET /1.0/metrics``."""
        return Reply(metadata={"text": metrics.exposition() + await self.metrics_text()})

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._own_bus:
            await self.bus.connect()
        await ensure_stream(self.bus)
        await self.operations.open()
        await self.setup()
        self._micro = await micro.add_service(
            self.bus.nc, name=f"corral-{self.name}", version=self.version,
            description=self.description or f"Corral {self.name} service",
            metadata={"node": self.config.node, "pid": str(os.getpid())},
            stats_handler=self._stats,
        )
        # Owner of the operations started from here on; fails those an earlier
        # incarnation of this service left unfinished, before any request is answered.
        await self.operations.claim(f"corral-{self.name}", self.config.node, self._micro.id)
        self._figures = {}  # a new micro service starts its counts from zero: so do we
        for spec in self.endpoints():
            await self._micro.add_endpoint(
                name=spec.verb, subject=self.subject_for(spec),
                queue_group=None if self.on_node(spec) else f"corral-{self.name}",
                handler=self._wrap(spec),
            )
            if spec.scope == "cluster" and self.on_node(spec):
                # A cluster node still answers the cluster-wide subject (any node, queue
                # group) for clients that name no node (the corral CLI, run hooks).
                await self._micro.add_endpoint(
                    name=f"{spec.verb}-any-node", subject=subjects.service(self.name, spec.verb),
                    queue_group=f"corral-{self.name}", handler=self._wrap(spec))
            if spec.scope == "cluster" and spec.verb not in ("info", "metrics"):
                # The same verb for credentials limited to one project (see subjects).
                await self._micro.add_endpoint(
                    name=f"{spec.verb}-in-project",
                    subject=subjects.project_service("*", self.name, spec.verb),
                    queue_group=f"corral-{self.name}", handler=self._wrap(spec, True))
        metrics.service_started(self.name, self.config.node, time.time())
        self.log.info("service started", endpoints=len(self.endpoints()))

    async def stop(self) -> None:
        if self._micro is not None:
            await self._micro.stop()
            self._micro = None
        if self._inflight:  # let requests under way answer before the bus closes
            await asyncio.wait(self._inflight, timeout=30)
        await self.operations.shutdown()  # running operations undo and end as failed
        await self.teardown()
        await self.events.drain()  # events nats-server has not acknowledged yet
        if self._own_bus:
            await self.bus.close()
        self._stopped.set()

    def _wrap(self, spec: EndpointSpec, in_project: bool = False
              ) -> Callable[[MicroRequest], Awaitable[None]]:
        handler = getattr(self, spec.attr)
        span_name = f"{self.name}.{spec.verb}"
        tracer = tracing.tracer(f"corral.{self.name}")

        figures = self._figures.setdefault(
            f"{spec.verb}-in-project" if in_project else spec.verb, EndpointFigures())
        subject = (subjects.project_service("*", self.name, spec.verb) if in_project
                   else self.subject_for(spec))

        async def handle(req: MicroRequest) -> None:
            # NATS delivers one subscription's messages one at a time: run each request in
            # its own task so a slow one (an image unpack) does not hold up its verb.
            figures.in_flight += 1
            if len(self._inflight) >= self.max_in_flight:
                message = (f"The {self.name} service is busy: {len(self._inflight)} "
                           "requests in flight, try again")
                figures.done(0, f"503: {message}")
                metrics.observe_request(self.name, subject, 503, 0.0)
                await req.respond_error("503", message)
                return
            task = asyncio.create_task(run(req))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        async def run(req: MicroRequest) -> None:
            started = time.perf_counter_ns()
            error: str | None = "500: request cancelled"
            try:
                error = await serve(req)
            finally:
                elapsed = time.perf_counter_ns() - started
                figures.done(elapsed, error)
                metrics.observe_request(self.name, subject,
                                        int(error.partition(":")[0]) if error else 200,
                                        elapsed / 1e9)

        async def serve(req: MicroRequest) -> str | None:
            """Answer one request; returns the error it answered with, if any."""
            ctx = tracing.extract(req.headers)
            kind = codec.content_type(req.headers, req.data)  # msgpack, or JSON for others

            async def fail(code: int, message: str) -> str:
                await _respond_error(req, kind, code, message)
                return f"{code}: {message}"

            with tracer.start_as_current_span(span_name, context=ctx, kind=SpanKind.SERVER
                                              ) as span:
                try:
                    try:
                        body = spec.request.model_validate(codec.decode_as(kind, req.data)
                                                           or {})
                    except (ValidationError, ValueError) as exc:
                        raise BadRequest(f"Invalid {spec.verb} request: {_brief(exc)}") from exc
                    if in_project:
                        check_project_claim(req.subject, spec.verb, body)
                    if self.config.cluster and not (req.headers or {}).get(FORWARDED):
                        node = await self.node_of(spec.verb, body)
                        if node and node != self.config.node:
                            await self._forward(req, node, spec.verb)
                            return None
                    self.log.debug("request", verb=spec.verb)
                    result = await handler(body)
                    if not isinstance(result, Reply):
                        result = Reply(metadata=result)
                    if kind == codec.JSON:
                        await req.respond(codec.encode_json(result),
                                          headers={codec.CONTENT_TYPE: codec.JSON})
                    else:
                        await req.respond(codec.encode(result))
                    return None
                except CorralError as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                    self.log.debug("request failed", verb=spec.verb, code=exc.code,
                                   error=exc.message)
                    return await fail(exc.code, exc.message)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    err = bus_error(exc)
                    if isinstance(err, CorralError):  # the bus went away under the request
                        self.log.warning("request failed: bus", verb=spec.verb, error=str(exc))
                        return await fail(err.code, err.message)
                    self.log.exception("request crashed", verb=spec.verb)
                    return await fail(500, f"Internal error in the {self.name} service: {exc}")

        return handle

    async def _forward(self, req: MicroRequest, node: str, verb: str) -> None:
        """Ask ``node``'s service the same request and answer with its reply (an error
        reply comes back as its CorralError and is answered by the caller)."""
        self.log.debug("request forwarded", verb=verb, to=node)
        msg = await self.bus.request_raw(
            subjects.node(node, self.name, verb), req.data, service=f"{self.name}@{node}",
            timeout=max(FORWARD_TIMEOUT, self.config.request_timeout),
            headers={**(req.headers or {}), FORWARDED: self.config.node})
        await req.respond(msg.data, headers=msg.headers)

    def _stats(self, stats: EndpointStats) -> dict[str, int]:
        """nats.micro's ``stats_handler``: our figures for one endpoint in ``$SRV.STATS``.

        nats.micro times and counts errors around the handler it calls, which here only
        starts a task (requests of one endpoint run concurrently), so its own figures would
        say every request took microseconds and none failed. The figures counted when each
        task ends go into the endpoint's public ``EndpointStats`` that micro hands this hook
        and then serialises; ``num_requests`` stays micro's own count of requests received.
        The ``data`` returned adds what is under way.
        """
        figures = self._figures.get(stats.name)
        if figures is None:
            return {}
        stats.num_errors = figures.errors
        stats.last_error = figures.last_error or None
        stats.processing_time = figures.processing_ns
        stats.average_processing_time = figures.processing_ns // max(1, figures.completed)
        return {"in_flight": figures.in_flight, "completed": figures.completed}


async def _respond_error(req: MicroRequest, kind: str, code: int, message: str) -> None:
    """An error reply: the micro error headers, and for a JSON caller LXD's error body."""
    if kind != codec.JSON:
        await req.respond_error(str(code), message)
        return
    body = codec.encode_json({"type": "error", "error": message, "error_code": code})
    await req.respond_error(str(code), message, data=body,
                            headers={codec.CONTENT_TYPE: codec.JSON})


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                         for e in exc.errors()[:3])
    return str(exc)


async def run_services(
    factories: list[Callable[[Config, Bus | None], "Service"]], name: str,
    after_start: Callable[[list["Service"]], Awaitable[Callable[[], Awaitable[None]]]]
    | None = None,
) -> None:
    """Run one or more services in this process until SIGTERM/SIGINT.

    With several factories they share one bus connection: the single-process mode is the
    same service code on the same bus, not a second implementation.
    """
    config = get_config()
    setup_logging(name, config.node, config.log_level)
    tracing.setup_tracing(name, config.node, config.tracing, config.otlp_endpoint)
    # asyncio's default pool has min(32, CPUs + 4) threads: 6 on a 2-core host, too few
    # for services whose blocking calls mostly wait (liblxc, libvirt, btrfs, files): 50
    # launches queued their quick checks behind slow work. Threads that wait cost little.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix=f"{name}-worker"))
    bus = Bus(config, name)
    await bus.connect()
    set_event_sink(_logging_events(Events(bus, location=config.node if config.cluster
                                          else "none"), name))
    services = [f(config, bus) for f in factories]
    for svc in services:
        await svc.start()
    stopper = await after_start(services) if after_start is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    set_event_sink(None)
    if stopper is not None:
        await stopper()
    for svc in reversed(services):
        await svc.stop()
    await Events(bus).drain()
    await bus.close()
    tracing.shutdown()  # the spans still batched


def _logging_events(events: Events, service: str) -> Callable[[dict[str, Any]], None]:
    """Publish log records as LXD ``logging`` events (fire and forget on the loop)."""
    loop = asyncio.get_running_loop()

    def sink(record: dict[str, Any]) -> None:
        context = {k: str(v) for k, v in record.items() if k not in _LOG_INTERNAL}
        context["service"] = str(record.get("component") or service)
        coro = events.logging(str(record.get("event", "")), str(record.get("level")),
                              context, service=context["service"])
        if events.bus.nc is None or events.bus.nc.is_closed:
            coro.close()  # while it reconnects, the outbox keeps them (shared/events.py)
            return
        loop.create_task(coro)

    return sink


_LOG_INTERNAL = {"event", "level", "timestamp", "service", "node", "span_id", "component",
                 "exc_info"}


def main_for(cls: type[Service]) -> Callable[[], None]:
    """The console-script entry point of one service."""

    def main() -> None:
        run_process(run_services([lambda c, b: cls(c, b)], cls.name))

    return main


def run_process(main: Coroutine[Any, Any, None]) -> NoReturn:
    """Run a service process's ``main`` to its end, then leave without the interpreter's
    finalization.

    Why: once ``run_services`` has returned, the service is stopped cleanly (operations
    failed with why, events sent, the bus drained, spans flushed, the executor's threads
    joined by ``asyncio.run``); what Python would still do is tear down every module and
    collect the objects of pydantic, nats, opentelemetry... one by one: 0.4-1 s of CPU per
    process, more under load, that every stop, restart and `make down` waited for. The
    exit handlers still run (logging's flush among them), then ``os._exit``. An exception
    from ``main`` leaves the usual way (traceback, status 1).
    """
    asyncio.run(main)
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """The exit handlers and the standard streams' buffers, then ``os._exit(code)``."""
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def check_project_claim(subject: str, verb: str, body: Any) -> None:
    """A request on ``corral.project.<p>.<svc>.<verb>`` must stay in ``<p>``.

    nats-server lets a credential limited to project ``p`` publish only under
    ``corral.project.p.>`` (shared/auth.py), so the subject's project is a claim the server
    vouched for; the body must agree: its ``project`` is ``p``, it lists no other project,
    and of projects themselves it may only read ``p``.
    """
    claim = subject.split(".")[2]
    project = getattr(body, "project", "default")
    if subjects.token(project) != claim or getattr(body, "all_projects", False):
        raise Forbidden(f"This credential is limited to project {claim!r}: not allowed in "
                        f"project {project!r}")
    if verb.startswith("project_") and (verb not in ("project_get", "project_state")
                                        or getattr(body, "name", None) != project):
        raise Forbidden(f"This credential is limited to project {claim!r}: it may only "
                        "read that project")
