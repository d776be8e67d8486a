"""One trace id from the HTTP request through the service that answered it."""

from __future__ import annotations

import json
import uuid

from .stack import wait_for


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
