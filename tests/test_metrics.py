"""``GET /1.0/metrics``: LXD's per-instance families and Corral's own, in Prometheus text that
the Prometheus parser reads; ``lxc query``; a ``metrics`` certificate may read it and
nothing else."""

from __future__ import annotations

import shutil
import ssl

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_https import clean_server, make_client_cert, port  # noqa: F401  (fixtures)
from .world import lxc, make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


def parse(text: str) -> dict[str, list]:
    """{sample name: [samples]} from Prometheus text (raises on text the parser rejects)."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def of(samples: dict[str, list], metric: str, **labels: str) -> list:
    return [s for s in samples.get(metric, [])
            if all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


def test_running_container_has_lxd_series_and_corral_its_own(world, stack, api):
    running, stopped = world.name("mrun"), world.name("mstop")
    lxc(stack, "launch", world.image, running, "-p", world.profile)
    lxc(stack, "init", world.image, stopped, "-p", world.profile)
    # some traffic and CPU inside, so the counters are not all zero
    lxc(stack, "exec", running, "--", "sh", "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
        "ping -c 2 -W 1 $(ip route | awk '/default/ {print $3}') || true")

    assert "metrics" in api.get("/1.0").json()["metadata"]["api_extensions"]
    r = api.get("/1.0/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    m = parse(r.text)
    me = {"name": running, "project": "default", "type": "container"}

    cpu = of(m, "lxd_cpu_seconds_total", **me)
    assert {s.labels["mode"] for s in cpu} == {"user", "system"}, cpu
    assert all("cpu" in s.labels for s in cpu)
    assert sum(s.value for s in cpu) > 0
    assert of(m, "lxd_memory_RSS_bytes", **me) or of(m, "lxd_memory_Cached_bytes", **me)
    total = of(m, "lxd_memory_MemTotal_bytes", **me)
    assert total and total[0].value > 0
    assert of(m, "lxd_memory_OOM_kills_total", **me)
    procs = of(m, "lxd_procs_total", **me)
    assert procs and procs[0].value >= 1
    rx = of(m, "lxd_network_receive_bytes_total", device="eth0", **me)
    tx = of(m, "lxd_network_transmit_packets_total", device="eth0", **me)
    assert rx and tx and tx[0].value > 0, (rx, tx)
    assert of(m, "lxd_network_receive_bytes_total", device="lo", **me)
    assert of(m, "lxd_filesystem_size_bytes", device="root", mountpoint="/", **me)
    # a stopped instance has no series (as LXD), but counts among the instances
    assert not [s for ss in m.values() for s in ss if s.labels.get("name") == stopped]
    counted = of(m, "lxd_instances", project="default", type="container")
    assert counted and counted[0].value >= 2

    # Corral's own: every service up, bus requests and their latency per subject
    up = {s.labels["service"]: s.value for s in m["corral_service_up"]}
    assert {"gateway", "instance", "storage", "network", "image"} <= set(up)
    assert all(up[s] == 1.0 for s in ("gateway", "instance", "storage", "network", "image"))
    created = of(m, "corral_bus_requests_total", service="instance",
                 subject="corral.instance.create", code="200")
    assert created and created[0].value >= 2
    count = of(m, "corral_bus_request_duration_seconds_count", service="instance",
               subject="corral.instance.create")
    buckets = of(m, "corral_bus_request_duration_seconds_bucket", service="instance",
                 subject="corral.instance.create")
    assert count and count[0].value >= 2 and any(b.labels["le"] == "+Inf" for b in buckets)
    assert of(m, "corral_bus_request_duration_seconds_count", service="storage")
    ops = of(m, "corral_operations", status="Success")
    assert ops and sum(s.value for s in ops) >= 2
    assert of(m, "lxd_operations_total") and of(m, "lxd_uptime_seconds")
    # one series per (name, labels): services of one process are not counted twice
    keys = [(n, tuple(sorted(s.labels.items()))) for n, ss in m.items() for s in ss]
    assert len(keys) == len(set(keys))

    # ?project= keeps that project's instance series only; an unknown project is a 404
    assert api.get("/1.0/metrics", params={"project": "nope"}).status_code == 404
    proj = world.name("mp")
    assert api.post("/1.0/projects", json={"name": proj}).status_code in (200, 201)
    try:
        r = api.get("/1.0/metrics", params={"project": proj})
        assert r.status_code == 200, r.text
        other = parse(r.text)
        assert not of(other, "lxd_cpu_seconds_total", name=running)
        assert other["corral_service_up"]
    finally:
        api.delete(f"/1.0/projects/{proj}")

    # the stock client reads it as LXD's: lxc query prints the text
    q = parse(lxc(stack, "query", "/1.0/metrics").stdout)
    assert of(q, "lxd_procs_total", **me)

    # a bus error is counted under its code
    assert api.get("/1.0/instances/no-such-instance").status_code == 404
    m2 = parse(api.get("/1.0/metrics").text)
    assert of(m2, "corral_bus_requests_total", service="instance",
              subject="corral.instance.get", code="404")

    lxc(stack, "stop", "--force", running)
    m3 = parse(api.get("/1.0/metrics").text)
    assert not of(m3, "lxd_cpu_seconds_total", name=running)


def test_a_metrics_certificate_reads_metrics_and_nothing_else(api, stack, port,  # noqa: F811
                                                              tmp_path):
    crt, key, fp = make_client_cert(tmp_path / "m", "scraper")
    lxc(stack, "config", "trust", "add", str(crt), "--type", "metrics", "--name", "scraper")
    shown = api.get(f"/1.0/certificates/{fp}").json()["metadata"]
    assert shown["type"] == "metrics" and shown["name"] == "scraper"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(str(crt), str(key))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30) as c:
        got = c.get("/1.0/metrics")
        assert got.status_code == 200, got.text
        assert parse(got.text)["corral_service_up"]
        assert c.get("/1.0/instances").status_code == 403
        assert c.get("/1.0/metrics", params={"project": "default"}).status_code == 200
    # an unknown certificate may not read it
    crt2, key2, _ = make_client_cert(tmp_path / "x", "stranger")
    ctx2 = ssl.create_default_context()
    ctx2.check_hostname, ctx2.verify_mode = False, ssl.CERT_NONE
    ctx2.load_cert_chain(str(crt2), str(key2))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx2, timeout=30) as c:
        assert c.get("/1.0/metrics").status_code == 403
    # a restricted metrics certificate sees only its projects' instance series
    r = api.patch(f"/1.0/certificates/{fp}", json={"restricted": True,
                                                   "projects": ["p-none"]})
    assert r.status_code == 200, r.text
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30) as c:
        text = c.get("/1.0/metrics").text
        assert not [s for ss in parse(text).values() for s in ss
                    if s.labels.get("project") == "default" and "name" in s.labels]


def test_single_process_mode_counts_each_request_once(tmp_path):
    """corral-all: every service answers its metrics verb from the one process registry;
    the gateway keeps each series once, so counts are not multiplied by six."""
    import os
    import subprocess

    from .stack import BIN, NatsServer, stop_pid, wait_for

    nats = NatsServer(tmp_path / "nats")
    nats.start()
    env = {**os.environ, "CORRAL_DIR": str(tmp_path / "corral"), "CORRAL_NATS_URL": nats.url,
           "CORRAL_NATS_CREDENTIALS": str(nats.credentials("all"))}
    proc = subprocess.Popen([str(BIN / "corral-all")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = tmp_path / "corral" / "unix.socket"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                          base_url="http://corral", timeout=30) as api:
            wait_for(lambda: api.get("/1.0").status_code == 200, 60, what="corral-all")
            for _ in range(3):
                assert api.get("/1.0/instances").status_code == 200
            text = api.get("/1.0/metrics").text
        m = parse(text)
        listed = of(m, "corral_bus_requests_total", service="instance",
                    subject="corral.instance.list", code="200")
        assert [s.value for s in listed] == [3.0]
        up = {s.labels["service"]: s.value for s in m["corral_service_up"]}
        assert all(v == 1.0 for v in up.values()) and "instance" in up, up
        keys = [(n, tuple(sorted(s.labels.items()))) for n, ss in m.items() for s in ss]
        assert len(keys) == len(set(keys))
    finally:
        stop_pid(proc)
        nats.stop()


def test_hook_deliveries_are_counted(api, uid):
    """A hook's test delivery to a receiver that refuses and to one that answers: both
    attempts appear in corral_hook_deliveries_total, by result."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"m{uid}"
    hook = {"name": name, "type": "lifecycle", "action": "profile-created",
            "webhook": {"url": "http://127.0.0.1:9/"}}  # discard: nothing listens
    try:
        assert api.post("/1.0/hooks", json=hook).status_code == 200
        assert api.post(f"/1.0/hooks/{name}/test", json={}).status_code == 200
        r = api.put(f"/1.0/hooks/{name}", json={
            **hook, "webhook": {"url": f"http://127.0.0.1:{server.server_address[1]}/"}})
        assert r.status_code == 200, r.text
        assert api.post(f"/1.0/hooks/{name}/test", json={}).status_code == 200
        m = parse(api.get("/1.0/metrics").text)
        for result in ("failure", "success"):
            got = of(m, "corral_hook_deliveries_total", hook=name, kind="webhook",
                     result=result)
            assert [s.value for s in got] == [1.0], (result, got)
        assert of(m, "corral_hook_delivery_duration_seconds_count", kind="webhook")
    finally:
        api.delete(f"/1.0/hooks/{name}")
        server.shutdown()
        server.server_close()


def test_a_stopped_service_is_reported_down_and_the_rest_still_served(api, stack):
    from .stack import wait_for

    stack.stop("migration")
    try:
        r = api.get("/1.0/metrics")
        assert r.status_code == 200, r.text
        m = parse(r.text)
        up = {s.labels["service"]: s.value for s in m["corral_service_up"]}
        assert up["migration"] == 0.0 and up["instance"] == 1.0, up
        assert not of(m, "corral_service_start_time_seconds", service="migration")
        assert of(m, "corral_service_start_time_seconds", service="instance")
    finally:
        stack.start("migration")

    def back() -> bool:
        m = parse(api.get("/1.0/metrics").text)
        return of(m, "corral_service_up", service="migration")[0].value == 1.0

    wait_for(back, 30, what="the migration service to be reported up again")
