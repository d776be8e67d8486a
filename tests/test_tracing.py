"""One trace from the HTTP request through every service it reaches.

The trace id flows from the client's ``traceparent`` through the gateway into the
services' logs (session stack). On a stack of its own with ``CORRAL_TRACE_FILE`` (each
process appends its finished spans as JSON lines) and ``CORRAL_OTLP_ENDPOINT`` (a
loopback OTLP/HTTP receiver here), an ``lxc launch`` and a create-and-start must leave
spans that form one tree per request across the gateway, instance, storage, network and
image services, linked by client spans of each bus request.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .stack import private_stack, socket_client, wait_for
from .world import lxc, make_world, wait_op

ALL = {"corral-gateway", "corral-instance", "corral-storage", "corral-network",
       "corral-image"}


def test_trace_id_flows_from_http_through_the_service(api, stack):
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    r = api.get("/1.0/profiles", headers={"traceparent": parent})
    assert r.status_code == 200
    assert r.headers["X-Corral-Trace-Id"] == trace_id

    def service_logged_it() -> bool:
        for line in stack.log_path("instance").read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("trace_id") == trace_id and rec.get("verb") == "profile_list":
                    return True
        return False

    wait_for(service_logged_it, 10, what="the instance service to log the trace id")


def test_gateway_starts_a_trace_when_the_client_sends_none(api):
    a = api.get("/1.0/instances").headers["X-Corral-Trace-Id"]
    b = api.get("/1.0/instances").headers["X-Corral-Trace-Id"]
    assert len(a) == 32 and a != b


# -- spans across processes ----------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector on loopback: keeps each export's decoded spans."""

    got: list[tuple[str, str, str]] = []  # (service.name, span name, trace id)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    _Receiver.got.append((service, span.name, span.trace_id.hex()))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture(scope="module")
def collector():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tstack(request, collector, tmp_path_factory):
    trace_file = tmp_path_factory.mktemp("traces") / "spans.jsonl"
    with private_stack(request, "tracing", CORRAL_TRACE_FILE=str(trace_file),
                       CORRAL_OTLP_ENDPOINT=collector) as s:
        s.trace_file = trace_file  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def tworld(tstack, busybox_tarball):
    if shutil.which("lxc") is None:
        pytest.skip("needs Debian's lxd-client")
    with socket_client(tstack) as api, \
            make_world(api, tstack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_tree(trace: list[dict], root_parent: str | None = None) -> dict:
    """Assert the spans of one trace form a single tree; return its root.

    Every span's parent is a span of the trace, except the root's: none (the gateway
    started the trace) or ``root_parent`` (the client's span that sent traceparent)."""
    ids = {s["span_id"] for s in trace}
    assert len(ids) == len(trace), "span ids repeat"
    roots = [s for s in trace if s["parent_id"] not in ids]
    assert len(roots) == 1, [(s["service"], s["name"], s["parent_id"]) for s in roots]
    root = roots[0]
    assert root["parent_id"] == root_parent
    assert root["service"] == "corral-gateway" and root["kind"] == "SERVER"
    by_id = {s["span_id"]: s for s in trace}
    for s in trace:
        parent = by_id.get(s["parent_id"])
        if parent is not None and parent["service"] != s["service"]:
            # crossing processes: a service's server span under the caller's client span
            assert (parent["kind"], s["kind"]) == ("CLIENT", "SERVER"), (parent, s)
    return root


def test_a_create_and_start_is_one_tree_across_every_service(tworld, tstack):
    trace_id, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    name = tworld.name("tr")
    r = tworld.api.post("/1.0/instances", headers={
        "traceparent": f"00-{trace_id}-{client_span}-01"}, json={
        "name": name, "source": {"type": "image", "alias": tworld.image},
        "profiles": [tworld.profile], "start": True})
    assert r.headers["X-Corral-Trace-Id"] == trace_id
    wait_op(tworld.api, r)
    assert tworld.live(name)["status"] == "Running"

    def whole() -> bool:
        mine = [s for s in spans(tstack.trace_file) if s["trace_id"] == trace_id]
        return ALL <= {s["service"] for s in mine}

    wait_for(whole, 20, what="spans of every service in the trace")
    trace = [s for s in spans(tstack.trace_file) if s["trace_id"] == trace_id]
    root = one_tree(trace, root_parent=client_span)
    assert root["name"] == "POST /1.0/instances"
    assert root["attributes"]["http.status_code"] == 202
    # each service answered at least one bus request of this trace as a child of a
    # client span named after the subject
    for svc in ALL - {"corral-gateway"}:
        served = [s for s in trace if s["service"] == svc and s["kind"] == "SERVER"]
        assert served, svc
    clients = [s for s in trace if s["kind"] == "CLIENT"]
    assert any(s["name"].startswith("corral.instance.") for s in clients)
    assert any(s["attributes"].get("messaging.system") == "nats" for s in clients)

    # the same spans reached the OTLP collector (batched: give it the export delay)
    wait_for(lambda: ALL <= {svc for svc, _n, t in _Receiver.got if t == trace_id}, 30,
             what="the OTLP receiver to get the trace from every service")


def test_lxc_launch_leaves_one_tree_per_request(tworld, tstack):
    before = len(spans(tstack.trace_file))
    name = tworld.name("lt")
    lxc(tstack, "launch", tworld.image, name, "-p", tworld.profile)
    new = spans(tstack.trace_file)[before:]
    roots = {s["trace_id"]: s for s in new
             if s["service"] == "corral-gateway" and s["parent_id"] is None}
    create = [t for t, s in roots.items() if s["name"] == "POST /1.0/instances"]
    start = [t for t, s in roots.items() if s["name"] == "PUT /1.0/instances/{name}/state"]
    assert len(create) == 1 and len(start) == 1, sorted(s["name"] for s in roots.values())
    seen: set[str] = set()
    # The create reaches image, storage and network; the start that follows it takes the
    # NICs the create resolved (lifecycle.start), so only gateway and instance.
    for trace_id, reached in ((create[0], 3), (start[0], 2)):
        wait_for(lambda t=trace_id, n=reached: len(
            {s["service"] for s in spans(tstack.trace_file) if s["trace_id"] == t}) >= n, 20)
        trace = [s for s in spans(tstack.trace_file) if s["trace_id"] == trace_id]
        one_tree(trace)
        seen |= {s["service"] for s in trace}
    assert ALL <= seen, seen
