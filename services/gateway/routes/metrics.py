"""``GET /1.0/metrics``: LXD's metrics in Prometheus text format, plus Corral's own.

Each service answers ``corral.<svc>.metrics`` with its process's registry
(``shared/metrics.py``: bus requests and latency per subject, hook deliveries) and what it
measures itself (the instance service: LXD's per-instance families, ``lxd_cpu_seconds_total``,
``lxd_memory_*_bytes``, ``lxd_disk_*``, ``lxd_network_*``, ``lxd_procs_total``, labelled
``name``, ``project``, ``type``). The gateway asks them all at once, merges the families
(a sample two services of one process both report is kept once), and adds what it knows:
which services answered (``corral_service_up``), the operations in the shared bucket by
class and status, LXD's ``lxd_operations_total`` and ``lxd_uptime_seconds``.

Who may read it: trusted clients, and certificates of type ``metrics`` (LXD's), which may
read nothing else; a restricted one sees only its projects' instance series. ``?project=``
keeps one project's instance series, as LXD.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from shared import metrics, subjects
from shared.models import Message

from ..routing import Context

API_EXTENSIONS = ["metrics"]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds a service has to answer; one that does not is reported down, not waited for.
ASK_TIMEOUT = 3.0
_STARTED = time.time()


async def get(ctx: Context, request: web.Request) -> web.Response:
    names = subjects.SERVICES
    replies = await asyncio.gather(*(_ask(ctx, svc) for svc in names))
    up = GaugeMetricFamily("corral_service_up", "Whether the service answered this scrape "
                           "(1) or not (0).", labels=["service"])
    up.add_metric(["gateway"], 1.0)
    for svc, text in zip(names, replies, strict=True):
        up.add_metric([svc], 0.0 if text is None else 1.0)
    own = metrics.render([up, *await _operations(ctx), _uptime()])
    texts = [metrics.exposition(), *(t for t in replies if t is not None), own]
    body = metrics.merge(texts, _project_filter(request))
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})


async def _ask(ctx: Context, svc: str) -> str | None:
    try:
        reply = await ctx.bus.request(svc, "metrics", Message(), timeout=ASK_TIMEOUT)
    except Exception:  # not running, or too busy to answer: reported as down
        return None
    meta: Any = reply.metadata
    return meta.get("text") if isinstance(meta, dict) else None


async def _operations(ctx: Context) -> list[Any]:
    """Operations in the shared bucket (kept ``operation_retention`` s after they end) by
    class and status, and LXD's count of running ones."""
    by: dict[tuple[str, str], int] = {}
    running = 0
    try:
        ops = await ctx.ops.list(None)
    except Exception:  # the bus is away: no operation series this scrape
        ops = []
    for op in ops:
        by[(op.get("class", ""), op.get("status", ""))] = \
            by.get((op.get("class", ""), op.get("status", "")), 0) + 1
        running += op.get("status") == "Running"
    fam = GaugeMetricFamily("corral_operations", "Operations known (running, or ended "
                            "within the retention), by class and status.",
                            labels=["class", "status"])
    for (cls, status), n in sorted(by.items()):
        fam.add_metric([cls, status], float(n))
    lxd = GaugeMetricFamily("lxd_operations_total", "The number of running operations")
    lxd.add_metric([], float(running))
    return [fam, lxd]


def _uptime() -> Any:
    fam = GaugeMetricFamily("lxd_uptime_seconds", "The daemon uptime in seconds.")
    fam.add_metric([], time.time() - _STARTED)
    return fam


def _project_filter(request: web.Request) -> set[str] | None:
    """The projects whose series this client may see (None: all)."""
    who = request.get("corral.identity")
    allowed: set[str] | None = None
    if who is not None and getattr(who, "restricted", False):
        allowed = set(getattr(who, "projects", ()))
    project = request.query.get("project")
    if project:
        allowed = {project} if allowed is None else allowed & {project}
    return allowed
