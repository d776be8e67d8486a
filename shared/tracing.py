"""OpenTelemetry set-up and W3C trace-context propagation through NATS headers.

One trace follows a request from the gateway's HTTP server span through a client span per
bus request (``shared/bus.py``) and the answering service's server span
(``shared/service.py``), into whatever that service asks next: the parent travels as
``traceparent`` in the NATS headers, so the spans of every process form one tree.

Where finished spans go:

- ``CORRAL_OTLP_ENDPOINT`` set (or ``tracing: otlp``): OTLP over HTTP, batched. The exporter
  (and protobuf under it) is imported only then: a process that exports nothing does not
  carry it in memory.
- ``CORRAL_TRACE_FILE``: each finished span as one JSON line appended to that file, written
  at once (tests read the spans of every process of a stack from it; lines under
  PIPE_BUF are appended whole even with several writers).
- ``tracing: console``: the SDK's console exporter (debugging).

With none of these nothing would ever read a span, so the SDK is not installed at all and
``tracer()`` hands out light spans: a ``NonRecordingSpan`` with a real trace id (the
caller's, or a new one) and a fresh span id, made current for the block. Why not the SDK with
a drop-everything sampler: that still costs about twice as much per span (sampler, id
generator, span object) and every request of every process pays it (~6% of the gateway's
busy time). What stays is what something reads: ``X-Corral-Trace-Id``, the ``traceparent``
sent on in NATS headers, and the ``trace_id`` in log lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
from typing import Iterator, Mapping, Sequence

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACE_FILE_ENV = "CORRAL_TRACE_FILE"
OTLP_ENDPOINT_ENV = "CORRAL_OTLP_ENDPOINT"

_propagator = TraceContextTextMapPropagator()
_installed = False
_recording = False  # an SDK provider with somewhere to send spans is installed
TRACEPARENT = "traceparent"


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in a file: name, kind, ids, parent, service, status.

    Why not the SDK's in-memory exporter: the spans of one request are made in six
    processes; a file they all append to is what a test (or a person) can read whole.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n"
                        for s in spans)
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, object]:
    """One span as a flat dict (ids in hex as W3C writes them)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name if span.kind is not None else "",
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "service": str(span.resource.attributes.get("service.name", "")),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v for k, v in (span.attributes or {}).items()
                       if isinstance(v, (str, int, float, bool))},
    }


def exporter_mode(mode: str, endpoint: str) -> str:
    """``otlp`` when an endpoint was given in the environment, else the configured mode."""
    if mode in ("off", "") and os.environ.get(OTLP_ENDPOINT_ENV):
        return "otlp"
    return mode


def setup_tracing(service: str, node: str, mode: str = "off", endpoint: str = "") -> None:
    global _installed, _recording
    if _installed:
        return
    _installed = True
    mode = exporter_mode(mode, endpoint)
    trace_file = os.environ.get(TRACE_FILE_ENV)
    if mode not in ("console", "otlp") and not trace_file:
        return  # nothing would read a span: light spans only (module docstring)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"corral-{service}", "host.name": node})
    )
    if mode == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif mode == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    trace.set_tracer_provider(provider)
    _recording = True


def _otlp_exporter(endpoint: str) -> SpanExporter:
    """The OTLP/HTTP exporter, imported here only (protobuf and requests weigh ~15 MB)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "tracing over OTLP needs opentelemetry-exporter-otlp-proto-http "
            "(a dependency of corral: pip install -e .)") from exc
    endpoint = endpoint or "http://127.0.0.1:4318/v1/traces"
    if not endpoint.rstrip("/").endswith("/v1/traces"):  # a collector's base URL
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


def shutdown() -> None:
    """Flush what is batched (a stopping process must not drop its last spans)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def recording() -> bool:
    """True when spans go somewhere: callers skip building attributes otherwise."""
    return _recording


class Tracer:
    """``start_as_current_span`` that is the SDK's when spans are recorded, light otherwise.

    Decided at each call, not when the tracer is made: services make theirs before
    ``setup_tracing`` runs.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._sdk: trace.Tracer | None = None

    def start_as_current_span(
        self, name: str, context: context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> contextlib.AbstractContextManager[trace.Span]:
        if not _recording:
            return _light_span(context)
        if self._sdk is None:
            self._sdk = trace.get_tracer(self.name)
        return self._sdk.start_as_current_span(name, context=context, kind=kind,
                                               attributes=attributes)


_tracers: dict[str, Tracer] = {}


def tracer(name: str = "corral") -> Tracer:
    """One tracer per name (the SDK makes a new one per ``get_tracer`` call)."""
    found = _tracers.get(name)
    if found is None:
        found = _tracers[name] = Tracer(name)
    return found


_random_bits = random.Random().getrandbits  # its own generator: ids, not secrets


@contextlib.contextmanager
def _light_span(parent_ctx: context.Context | None) -> Iterator[trace.Span]:
    """A non-recording span continuing the parent's trace (or a new one), made current."""
    parent = trace.get_current_span(parent_ctx).get_span_context()
    if parent.is_valid:
        span_ctx = SpanContext(parent.trace_id, _random_bits(64) or 1, False, parent.trace_flags)
    else:  # a root: sampled, as the SDK's default sampler would say for a new trace
        span_ctx = SpanContext(_random_bits(128) or 1, _random_bits(64) or 1, False,
                               TraceFlags(TraceFlags.SAMPLED))
    span = NonRecordingSpan(span_ctx)
    token = context.attach(trace.set_span_in_context(span, parent_ctx))
    try:
        yield span
    finally:
        context.detach(token)


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Add ``traceparent`` for the current span to a header dict (for NATS or HTTP)."""
    headers = {} if headers is None else headers
    _propagator.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The remote parent in ``headers``; an empty context at once when none is sent."""
    if not headers or TRACEPARENT not in headers:
        return context.Context()
    return _propagator.extract(dict(headers))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
