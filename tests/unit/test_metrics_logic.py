"""Pure logic of metrics and traces: merging services' Prometheus texts, LXD's families from
cgroup files (a fake cgroup tree in a temp dir), the metrics certificate's access, span
records and the exporter choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from services.gateway import trust
from services.instance import metrics_api
from services.instance.drivers.cgroups import CgroupPaths
from shared import metrics, tracing
from shared.errors import Forbidden


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_merge_keeps_a_sample_once_and_every_distinct_one():
    a = "# TYPE x_total counter\nx_total{service=\"a\"} 1\n"
    b = "# TYPE x_total counter\nx_total{service=\"a\"} 1\nx_total{service=\"b\"} 2\n"
    got = samples(metrics.merge([a, b, a]))
    assert got == {("x_total", (("service", "a"),)): 1.0,
                   ("x_total", (("service", "b"),)): 2.0}


def test_merge_groups_a_family_of_several_texts_and_keeps_its_header_once():
    a = ('# HELP h Latency.\n# TYPE h histogram\nh_bucket{le="1.0",s="a b}"} 1.0\n'
         'h_count{s="a b}"} 1.0\nh_sum{s="a b}"} 0.5\n# HELP g G.\n# TYPE g gauge\ng 3.0\n')
    b = ('# HELP h Latency.\n# TYPE h histogram\nh_bucket{le="1.0",s="c"} 2.0\n'
         'h_count{s="c"} 2.0\nh_sum{s="c"} 1.5\n')
    text = metrics.merge([a, b])
    assert text.count("# TYPE h histogram") == 1 and text.count("# HELP h ") == 1
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["h"].type == "histogram" and len(fams["h"].samples) == 6
    assert fams["g"].samples[0].value == 3.0


def test_merge_keeps_only_the_projects_asked():
    a = ('# TYPE lxd_procs_total gauge\nlxd_procs_total{name="c1",project="p1"} 1.0\n'
         'lxd_procs_total{name="c2",project="p2"} 2.0\n'
         'lxd_procs_total{name="c3",subproject="p2"} 3.0\n')
    got = samples(metrics.merge([a], {"p1"}))
    assert set(got) == {("lxd_procs_total", (("name", "c1"), ("project", "p1"))),
                        ("lxd_procs_total", (("name", "c3"), ("subproject", "p2")))}


def test_merge_rejects_what_the_parser_rejects():
    with pytest.raises(ValueError):
        metrics.merge(["x{bad 1\n"])


def test_request_observations_are_counted_per_subject_and_code():
    metrics.observe_request("unit", "corral.unit.verb", 404, 0.003)
    got = samples(metrics.exposition())
    assert got[("corral_bus_requests_total", (("code", "404"), ("service", "unit"),
                                              ("subject", "corral.unit.verb")))] >= 1
    assert got[("corral_bus_request_duration_seconds_bucket",
                (("le", "0.005"), ("service", "unit"), ("subject", "corral.unit.verb")))] >= 1


def test_hook_api_counts_attempts_and_dead_letters():
    metrics.hook_delivery("h-unit", "webhook", ok=False, seconds=0.1)
    metrics.hook_delivery("h-unit", "webhook", ok=True, seconds=0.1)
    metrics.hook_dead_letter("h-unit", "webhook")
    got = samples(metrics.exposition())
    for result in ("success", "failure"):
        assert got[("corral_hook_deliveries_total", (("hook", "h-unit"), ("kind", "webhook"),
                                                     ("result", result)))] >= 1
    assert got[("corral_hook_delivery_failures_total",
                (("hook", "h-unit"), ("kind", "webhook")))] >= 1


def _fake_cgroup(tmp: Path, files: dict[str, str], v1: tuple[str, ...]) -> CgroupPaths:
    cg = CgroupPaths.__new__(CgroupPaths)
    cg.dirs = {c: tmp / c for c in v1} or {"unified": tmp / "unified"}
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return cg


def test_cgroup_v1_cpu_per_cpu_cpuset_and_blkio(tmp_path):
    cg = _fake_cgroup(tmp_path, {
        "cpuacct/cpuacct.usage_all": "cpu user system\n0 2000000000 1000000000\n"
                                     "1 500000000 0\n",
        "cpuset/cpuset.effective_cpus": "0-1,3\n",
        "blkio/blkio.throttle.io_service_bytes_recursive":
            "7:0 Read 99\n8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
        "blkio/blkio.throttle.io_serviced_recursive": "8:0 Read 2\n8:0 Write 3\n",
    }, v1=("cpuacct", "cpuset", "blkio"))
    assert sorted(metrics_api._cpu_seconds(cg)) == [
        ("0", "system", 1.0), ("0", "user", 2.0), ("1", "system", 0.0), ("1", "user", 0.5)]
    assert metrics_api._effective_cpus(cg) == 3
    io = metrics_api._io_stats(cg)
    assert len(io) == 1  # the loop device (7:x) is left out, as LXD
    assert list(io.values())[0] == [4096.0, 2.0, 8192.0, 3.0]


def test_cgroup_v2_cpu_and_io(tmp_path):
    cg = _fake_cgroup(tmp_path, {
        "unified/cpu.stat": "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
        "unified/io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"
                           "7:1 rbytes=5 wbytes=5 rios=1 wios=1\n",
        "unified/cpuset.cpus.effective": "0\n",
    }, v1=())
    assert sorted(metrics_api._cpu_seconds(cg)) == [("0", "system", 1.0), ("0", "user", 2.0)]
    assert list(metrics_api._io_stats(cg).values()) == [[10.0, 1.0, 20.0, 2.0]]
    assert metrics_api._effective_cpus(cg) == 1


def test_lxd_families_names_types_and_labels():
    recs = [{"name": "c1", "project": "default"}, {"name": "c2", "project": "default"},
            {"name": "v1", "project": "p", "type": "virtual-machine"}]
    labels = {"name": "c1", "project": "default", "type": "container"}
    state = {"processes": 4, "network": {"eth0": {"counters": {"bytes_received": 7}}}}
    per = [(labels, [*metrics_api.common_samples(state),
                     ("memory_RSS_bytes", {}, 1024.0),
                     ("cpu_seconds_total", {"cpu": "0", "mode": "user"}, 1.5)])]
    text = metrics_api.render(recs, per)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["lxd_memory_RSS_bytes"] == "gauge"
    assert types["lxd_procs_total"] == "gauge"
    assert types["lxd_cpu_seconds"] == "counter"
    assert types["lxd_network_receive_bytes"] == "counter"
    got = samples(text)
    me = tuple(sorted(labels.items()))
    assert got[("lxd_procs_total", me)] == 4
    assert got[("lxd_network_receive_bytes_total",
                tuple(sorted({**labels, "device": "eth0"}.items())))] == 7
    assert got[("lxd_cpu_seconds_total",
                tuple(sorted({**labels, "cpu": "0", "mode": "user"}.items())))] == 1.5
    assert got[("lxd_instances", (("project", "default"), ("type", "container")))] == 2
    assert got[("lxd_instances", (("project", "p"), ("type", "virtual-machine")))] == 1
    assert got[("lxd_instances", (("project", "p"), ("type", "container")))] == 0


def test_a_metrics_certificate_reaches_only_metrics():
    who = trust.Identity(protocol="tls", trusted=False, fingerprint="f", metrics=True)
    trust.check_access(who, "GET", "/1.0/metrics", "default", False)
    with pytest.raises(Forbidden):
        trust.check_access(who, "GET", "/1.0/instances", "default", False)
    with pytest.raises(Forbidden):
        trust.check_access(who, "PUT", "/1.0/metrics", "default", False)
    stranger = trust.Identity(protocol="tls", trusted=False, fingerprint="g")
    with pytest.raises(Forbidden):
        trust.check_access(stranger, "GET", "/1.0/metrics", "default", False)


def test_spans_as_json_lines_keep_the_tree(tmp_path):
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tracing.JsonLinesExporter(str(path))))
    t = provider.get_tracer("unit")
    with t.start_as_current_span("GET /x", kind=SpanKind.SERVER) as root:
        with t.start_as_current_span("corral.a.b", kind=SpanKind.CLIENT,
                                     attributes={"messaging.system": "nats"}):
            pass
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    child, parent = rows
    assert parent["parent_id"] is None and parent["kind"] == "SERVER"
    assert child["parent_id"] == parent["span_id"] == format(
        root.get_span_context().span_id, "016x")
    assert child["trace_id"] == parent["trace_id"]
    assert child["attributes"] == {"messaging.system": "nats"}


def test_otlp_is_chosen_by_the_endpoint_variable(monkeypatch):
    monkeypatch.delenv(tracing.OTLP_ENDPOINT_ENV, raising=False)
    assert tracing.exporter_mode("off", "") == "off"
    monkeypatch.setenv(tracing.OTLP_ENDPOINT_ENV, "http://127.0.0.1:4318")
    assert tracing.exporter_mode("off", "http://127.0.0.1:4318") == "otlp"
    assert tracing.exporter_mode("console", "") == "console"
    exporter = tracing._otlp_exporter("http://127.0.0.1:4318")
    assert exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
