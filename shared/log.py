"""structlog JSON logs carrying service, node, trace id and operation id.

The trace id comes from the current OpenTelemetry span, the operation id from a context
variable the operation runner binds, so every line a request causes can be found again.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Callable

import structlog
from opentelemetry import trace

operation_id: ContextVar[str | None] = ContextVar("corral_operation_id", default=None)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _add_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    op = operation_id.get()
    if op:
        event.setdefault("operation_id", op)
    return event


# Where log records also go as LXD "logging" events (set by the service base once the bus
# is up). Only records at info and above, as LXD's default log level.
_event_sink: Callable[[dict[str, Any]], None] | None = None
_EVENT_LEVELS = {"info", "warning", "error", "critical"}
_INTERNAL = {"event", "level", "timestamp", "service", "node", "trace_id", "span_id"}


def set_event_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    global _event_sink
    _event_sink = sink


def _to_events(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    sink = _event_sink
    if sink is not None and event.get("level") in _EVENT_LEVELS:
        try:
            sink(event)
        except Exception:  # logging must never fail the caller
            pass
    return event


def setup_logging(service: str, node: str, level: str = "info") -> None:
    """Configure structlog for this process: one JSON object per line on stderr."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_ids,
            structlog.processors.format_exc_info,
            _to_events,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, node=node)


def get_logger(**bind: Any) -> Any:
    return structlog.get_logger(**bind)
