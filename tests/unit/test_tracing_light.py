"""With no exporter the tracer hands out light, non-recording spans that still carry ids.

Why it matters: every HTTP request and bus request of every process opens a span; with
nothing to read them the SDK's spans were ~6% of the gateway's busy time, yet the trace id
must still reach ``X-Corral-Trace-Id``, the NATS ``traceparent`` and the log lines.
"""

from __future__ import annotations

from opentelemetry import trace

from shared import tracing

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{PARENT_TRACE}-b7ad6b7169203331-01"


def _no_exporter(monkeypatch) -> None:
    monkeypatch.setattr(tracing, "_installed", False)
    monkeypatch.setattr(tracing, "_recording", False)
    monkeypatch.delenv(tracing.TRACE_FILE_ENV, raising=False)
    monkeypatch.delenv(tracing.OTLP_ENDPOINT_ENV, raising=False)
    tracing.setup_tracing("unit", "node1", "off", "")


def test_setup_without_an_exporter_records_nothing(monkeypatch):
    _no_exporter(monkeypatch)
    assert not tracing.recording()
    with tracing.tracer("t").start_as_current_span("x") as span:
        assert not span.is_recording()


def test_a_light_span_continues_the_callers_trace_with_a_span_of_its_own(monkeypatch):
    _no_exporter(monkeypatch)
    ctx = tracing.extract({"traceparent": PARENT})
    with tracing.tracer("t").start_as_current_span("x", context=ctx) as span:
        own = span.get_span_context()
        assert format(own.trace_id, "032x") == PARENT_TRACE
        assert format(own.span_id, "016x") != "b7ad6b7169203331"
        assert tracing.current_trace_id() == PARENT_TRACE
        sent = tracing.inject()["traceparent"]  # what the next bus request carries
        assert sent == f"00-{PARENT_TRACE}-{own.span_id:016x}-01"
        with tracing.tracer("bus").start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == own.trace_id
            assert child.get_span_context().span_id != own.span_id
    assert tracing.current_trace_id() is None  # detached after the block


def test_a_light_root_starts_a_new_trace_each_time(monkeypatch):
    _no_exporter(monkeypatch)
    ids = set()
    for _ in range(3):
        with tracing.tracer("t").start_as_current_span("x", context=tracing.extract({})):
            ids.add(tracing.current_trace_id())
    assert len(ids) == 3 and None not in ids


def test_extract_without_traceparent_is_an_empty_context():
    assert trace.get_current_span(tracing.extract(None)).get_span_context().is_valid is False
    assert trace.get_current_span(
        tracing.extract({"other": "x"})).get_span_context().is_valid is False
