"""Corral's own Prometheus metrics: one registry per process, read over the bus.

Why one registry per process (not per service): in single mode (``corral-all``) every
service shares a process, and the gateway drops samples it already has, so the figures
are not counted twice. Each service answers ``corral.<svc>.metrics`` with this registry's
text (``shared/service.py``), plus what the service itself measures (the instance service:
LXD's per-instance families); ``GET /1.0/metrics`` (the gateway) merges them.

For other services' code, the API is these functions (no prometheus_client import needed):

- :func:`observe_request` - one bus request answered (``shared/service.py`` calls it).
- :func:`hook_delivery` - one hook delivery attempt ended (the hooks service calls it):
  ``hook_delivery("h1", "webhook", ok=False, seconds=0.2)``; after the last retry also
  :func:`hook_dead_letter`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

disable_created_metrics()  # no *_created series: LXD's output has none, scrapers ignore them

REGISTRY = CollectorRegistry(auto_describe=True)

# Bus requests take from ~1 ms (a cached list) to minutes (an image unpack, a copy).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0)

BUS_REQUESTS = Counter(
    "corral_bus_requests", "Bus requests answered, by service, subject and reply code.",
    ("service", "subject", "code"), registry=REGISTRY)
BUS_LATENCY = Histogram(
    "corral_bus_request_duration_seconds",
    "Time from a bus request's arrival to its reply, by service and subject.",
    ("service", "subject"), buckets=_LATENCY_BUCKETS, registry=REGISTRY)
SERVICE_INFO = Gauge(
    "corral_service_start_time_seconds", "When each service of this process started "
    "(Unix time).", ("service", "node"), registry=REGISTRY)
HOOK_DELIVERIES = Counter(
    "corral_hook_deliveries", "Hook delivery attempts, by hook, kind (webhook, publish, "
    "run) and result (success, failure).", ("hook", "kind", "result"), registry=REGISTRY)
HOOK_FAILURES = Counter(
    "corral_hook_delivery_failures", "Hook deliveries that failed after every retry "
    "(sent to the dead-letter subject).", ("hook", "kind"), registry=REGISTRY)
HOOK_LATENCY = Histogram(
    "corral_hook_delivery_duration_seconds", "Time one hook delivery attempt took.",
    ("kind",), buckets=_LATENCY_BUCKETS, registry=REGISTRY)


def observe_request(service: str, subject: str, code: int, seconds: float) -> None:
    """Count one answered bus request (``code`` 200 for a reply, else its error code)."""
    BUS_REQUESTS.labels(service, subject, str(code)).inc()
    BUS_LATENCY.labels(service, subject).observe(seconds)


def service_started(service: str, node: str, when: float) -> None:
    SERVICE_INFO.labels(service, node).set(when)


def hook_delivery(hook: str, kind: str, ok: bool, seconds: float = 0.0) -> None:
    """Count one delivery attempt of ``hook`` (kind: webhook, publish or run)."""
    HOOK_DELIVERIES.labels(hook, kind, "success" if ok else "failure").inc()
    HOOK_LATENCY.labels(kind).observe(seconds)


def hook_dead_letter(hook: str, kind: str) -> None:
    """A delivery gave up after its retries (it went to the dead-letter subject)."""
    HOOK_FAILURES.labels(hook, kind).inc()


def exposition() -> str:
    """This process's registry in Prometheus text format."""
    return generate_latest(REGISTRY).decode()


def merge(texts: list[str]) -> list:
    """Parse Prometheus texts and merge their families by name; a sample seen twice (the
    same name and labels: two services of one process) is kept once. Raises ValueError on
    text the parser rejects."""
    families: dict[str, object] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for text in texts:
        for fam in text_string_to_metric_families(text):
            have = families.get(fam.name)
            if have is None:
                have = families[fam.name] = fam.__class__(fam.name, fam.documentation,
                                                          fam.type, fam.unit)
            for sample in fam.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen.add(key)
                    have.samples.append(sample)  # type: ignore[attr-defined]
    return list(families.values())


def render(families: list) -> str:
    """Families (``prometheus_client`` Metric objects) as Prometheus text."""

    class _Fixed:
        def collect(self) -> list:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()
