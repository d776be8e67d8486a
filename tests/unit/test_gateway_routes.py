"""The gateway's route table: one handler per (method, path), each bus route a real verb.

The verbs a service answers are read from its source (``@endpoint("verb", ...)``), not by
importing it: a unit test starts no service and needs none of their dependencies.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.gateway.routes import ROUTES
from services.gateway.routing import Ask, Route, aliased, mount

ROOT = Path(__file__).resolve().parents[2]


def declared_verbs(service: str) -> set[str]:
    """Every ``@endpoint("<verb>", ...)`` in services/<service>/ (and the base's ``info``)."""
    verbs = {"info"}
    for path in (ROOT / "services" / service).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "endpoint"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                verbs.add(node.args[0].value)
    return verbs


def test_each_method_and_path_has_one_handler() -> None:
    twice = [k for k, n in Counter((r.method, r.path) for r in ROUTES).items() if n > 1]
    assert not twice


def test_every_bus_route_names_a_verb_its_service_declares() -> None:
    asks = [r for r in ROUTES if isinstance(r.handler, Ask)]
    assert len(asks) > 50, "the table lost its bus routes"
    verbs = {svc: declared_verbs(svc) for svc in {r.handler.service for r in asks}}
    missing = [f"{r.method} {r.path} -> {r.handler.service}.{r.handler.verb}"
               for r in asks if r.handler.verb not in verbs[r.handler.service]]
    assert not missing


@pytest.mark.parametrize("method,path,service,verb", [
    ("PUT", "/1.0/containers/{name}/state", "instance", "state_put"),
    ("GET", "/1.0/profiles/{name}", "instance", "profile_get"),
    ("POST", "/1.0/images/aliases", "image", "alias_create"),
    ("DELETE", "/1.0/storage-pools/{name}", "storage", "delete"),
    ("GET", "/1.0/networks/{name}/leases", "network", "leases"),
])
def test_paths_map_to_their_bus_request(method: str, path: str, service: str, verb: str
                                        ) -> None:
    [route] = [r for r in ROUTES if (r.method, r.path) == (method, path)]
    assert isinstance(route.handler, Ask)
    assert (route.handler.service, route.handler.verb) == (service, verb)


@pytest.mark.parametrize("method,url,service,verb", [
    ("GET", "/1.0/images/aliases", "image", "alias_list"),
    ("GET", "/1.0/images/aliases/busybox", "image", "alias_get"),
    ("GET", "/1.0/images/abc123", "image", "get"),
    ("GET", "/1.0/instances/c1/state", "instance", "state"),
    ("HEAD", "/1.0/instances/c1/files", "instance", "file_get"),
    ("GET", "/1.0/storage-pools/p/volumes/custom/v", "storage", "custom_get"),
    ("POST", "/1.0/storage-pools/p/volumes/custom/v/snapshots", "storage",
     "custom_snapshot_create"),
    ("GET", "/1.0/storage-pools/p/volumes/image/v", "storage", "volume_get"),
])
async def test_urls_reach_their_bus_request_through_aiohttp(method: str, url: str,
                                                           service: str, verb: str) -> None:
    """aiohttp tries routes in order: ``/1.0/images/aliases`` must not reach
    ``/1.0/images/{name}``, and a GET answers HEAD unless the path has its own."""
    app = web.Application()
    mount(app.router, None, ROUTES)  # type: ignore[arg-type]
    match = await app.router.resolve(make_mocked_request(method, url, app=app))
    handler = match.handler.route_handler  # as mount bound it to the gateway's context
    assert isinstance(handler, Ask) and (handler.service, handler.verb) == (service, verb)


@pytest.mark.parametrize("method,url", [("GET", "/1.0/instances"), ("GET", "/1.0/containers"),
                                        ("HEAD", "/1.0/instances")])
async def test_instance_lists_reach_the_json_passthrough(method: str, url: str) -> None:
    """The instance list is the one route answered from the service's JSON bytes (see
    routes/instances.py instance_list), not through a generic Ask."""
    from services.gateway.routes.instances import instance_list

    app = web.Application()
    mount(app.router, None, ROUTES)  # type: ignore[arg-type]
    match = await app.router.resolve(make_mocked_request(method, url, app=app))
    assert match.handler.route_handler is instance_list


def test_aliased_repeats_routes_under_the_alias_only() -> None:
    async def h(_ctx, _req):  # pragma: no cover - never called
        raise AssertionError

    routes = [Route("GET", "/1.0/instances", h), Route("GET", "/1.0/other", h)]
    assert [(r.method, r.path) for r in aliased(routes, "/1.0/instances", "/1.0/containers")
            ] == [("GET", "/1.0/instances"), ("GET", "/1.0/other"),
                  ("GET", "/1.0/containers")]
