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

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

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


# One sample line of the text format: name, optional {labels}, value, optional timestamp.
_SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? \S+( \S+)?')
_PROJECT = re.compile(r'[{,]project="((?:[^"\\]|\\.)*)"')


def merge(texts: list[str], projects: set[str] | None = None) -> str:
    """Merge Prometheus texts (as ``generate_latest`` writes them) family by family into
    one text; a sample seen twice (the same name and labels: two services of one process)
    is kept once. With ``projects``, a sample labelled with another ``project`` is left out.
    Raises ValueError on a line that is not the text format.

    Why lines, not ``prometheus_client``'s parser and renderer: every ``GET /1.0/metrics``
    merges six services' texts (hundreds of histogram lines each); parsing each sample into
    objects and rendering them back was most of the gateway's time for a scrape (~25 ms of
    CPU per request on this 2-core host). A family's lines only have to be grouped under
    its first ``# HELP``/``# TYPE`` and deduplicated by their name and labels.
    """
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    seen: set[str] = set()
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    have = headers.setdefault(family, [])
                    samples.setdefault(family, [])
                    if not any(h.startswith(f"# {parts[1]} ") for h in have):
                        have.append(line)
                continue
            if _SAMPLE.fullmatch(line) is None:
                raise ValueError(f"not a Prometheus sample line: {line[:200]!r}")
            key = line[:line.rindex("}") + 1] if "{" in line.split(" ", 1)[0] \
                else line.split(" ", 1)[0]
            if key in seen:
                continue
            seen.add(key)
            if projects is not None:
                found = _PROJECT.search(key)
                if found is not None and found.group(1) not in projects:
                    continue
            samples.setdefault(family, []).append(line)
    out: list[str] = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + "\n" if out else ""


def render(families: list) -> str:
    """Families (``prometheus_client`` Metric objects) as Prometheus text."""

    class _Fixed:
        def collect(self) -> list:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()
