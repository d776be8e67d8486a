"""OpenTelemetry set-up and W3C trace-context propagation through NATS headers.

The SDK provider is always installed so spans carry real ids (and logs can show them); the
exporter is off by default, ``console`` or ``otlp`` by config.
"""

from __future__ import annotations

from typing import Mapping

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_installed = False


def setup_tracing(service: str, node: str, mode: str = "off", endpoint: str = "") -> None:
    global _installed
    if _installed:
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"corral-{service}", "host.name": node})
    )
    if mode == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif mode == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # optional extra: pip install 'corral[otlp]'
            raise RuntimeError(
                "tracing=otlp needs the OTLP exporter: pip install 'corral[otlp]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _installed = True


def tracer(name: str = "corral") -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Add ``traceparent`` for the current span to a header dict (for NATS or HTTP)."""
    headers = {} if headers is None else headers
    _propagator.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> context.Context:
    return _propagator.extract(dict(headers or {}))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
