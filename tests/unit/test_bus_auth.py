"""shared/auth.py without a server: the permission tables agree with the code, and the
files it writes are private, stable across runs, and changed only by create/revoke."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from shared import auth, subjects

ROOT = Path(__file__).resolve().parents[2]


def _calls_in_code() -> dict[str, set[tuple[str, str]]]:
    """Every ``<x>.request("svc", "verb", ...)`` in services/<svc>/, by calling service."""
    found: dict[str, set[tuple[str, str]]] = {}
    for svc in subjects.SERVICES:
        for path in (ROOT / "services" / svc).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "request" and len(node.args) >= 2
                        and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                for a in node.args[:2])):
                    found.setdefault(svc, set()).add((node.args[0].value, node.args[1].value))
    return found


def _stores_in_code() -> dict[str, set[str]]:
    """Every ``Store(bus, "bucket")`` a service opens."""
    found: dict[str, set[str]] = {}
    for svc in subjects.SERVICES:
        for path in (ROOT / "services" / svc).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "Store" and len(node.args) >= 2
                        and isinstance(node.args[1], ast.Constant)):
                    found.setdefault(svc, set()).add(node.args[1].value)
    return found


def test_every_call_between_services_is_allowed():
    calls = _calls_in_code()
    assert calls, "the scan found no bus.request calls: the checker is broken"
    for svc, pairs in calls.items():
        missing = pairs - set(auth.CALLS[svc])
        assert not missing, (f"services/{svc} calls {sorted(missing)}: add them to "
                             "shared/auth.py CALLS or the server refuses them")
        publish = auth.service_permissions(svc).publish
        for callee, verb in pairs:
            assert subjects.service(callee, verb) in publish
            assert subjects.node("*", callee, verb) in publish


def _bucket_constants() -> dict[str, set[str]]:
    """Module-level ``BUCKET = "name"`` in services/<svc>/ (and the gateway's)."""
    found: dict[str, set[str]] = {}
    for svc in (*subjects.SERVICES, auth.GATEWAY):
        for path in (ROOT / "services" / svc).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and any(isinstance(t, ast.Name) and t.id == "BUCKET"
                                for t in node.targets)):
                    found.setdefault(svc, set()).add(node.value.value)
    return found


def test_every_bucket_a_service_opens_is_its_own():
    stores = _stores_in_code()
    assert stores
    for svc, buckets in stores.items():
        owned = {name for name, kind, _ in auth.BUCKETS[svc] if kind == "kv"}
        assert buckets <= owned, f"services/{svc} opens {sorted(buckets - owned)}"
    constants = _bucket_constants()
    assert "gateway" in constants
    for svc, buckets in constants.items():
        owned = {name for name, _kind, _ in auth.BUCKETS[svc]}
        assert buckets <= owned, f"services/{svc} names buckets {sorted(buckets - owned)}: " \
            "add them to shared/auth.py BUCKETS"


def test_services_do_not_get_each_others_commands_or_buckets():
    network = auth.service_permissions("network")
    assert "corral.instance.create" not in network.publish
    assert not any(p.startswith(("$KV.instances", "$JS.API.STREAM.INFO.KV_instances"))
                   for p in network.publish)
    assert "corral.network.*" in network.subscribe and "corral.node.*.network.*" in \
        network.subscribe
    assert not any(s.startswith("corral.streams") for s in network.subscribe + network.publish)
    assert network.subscribe.count("_INBOX_network.>") == 1
    assert not any(s.startswith("_INBOX.") for s in network.subscribe)


def test_roles_grow_from_events_to_operator():
    events = auth.role_permissions("e", "events")
    reader = auth.role_permissions("r", "reader")
    operator = auth.role_permissions("o", "operator")
    assert not any(p.startswith("corral.") for p in events.publish)
    assert "corral.events.>" in events.subscribe
    assert f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}" in events.publish
    assert f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}" not in events.publish
    assert "corral.*.list" in reader.publish and "corral.*.create" not in reader.publish
    assert "corral.*.file_get" not in reader.publish
    assert "corral.*.*" in operator.publish
    for perms in (events, reader, operator):
        assert perms.deny == ("corral.streams.>",) and not perms.responses
    with pytest.raises(ValueError):
        auth.role_permissions("x", "root")


def test_init_is_private_and_idempotent(tmp_path):
    added = auth.init(tmp_path)
    assert set(added) == set(auth.BUILTIN)
    paths = auth.Paths(tmp_path)
    before = paths.registry.read_text()
    for path in (paths.registry, paths.auth_conf, paths.route_conf,
                 paths.credentials(auth.ADMIN)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(paths.credentials_dir.stat().st_mode) == 0o700
    assert not paths.credentials(auth.ROUTE_USER).exists()
    assert auth.init(tmp_path) == []
    assert paths.registry.read_text() == before  # same passwords
    conf = paths.auth_conf.read_text()
    assert "authorization:" in conf and '"user": "gateway"' in conf
    gateway = json.loads(paths.credentials("gateway").read_text())
    assert gateway["inbox_prefix"] == "_INBOX_gateway" and gateway["password"] in conf


def test_create_and_revoke_integrations(tmp_path):
    with pytest.raises(auth.AuthError) as no_users:
        auth.create(tmp_path, "hook", "events")
    assert no_users.value.code == 503
    auth.init(tmp_path)
    path = auth.create(tmp_path, "hook", "events", "default")
    body = json.loads(path.read_text())
    assert body["role"] == "events" and body["project"] == "default"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert '"user": "hook"' in auth.Paths(tmp_path).auth_conf.read_text()
    assert [i["name"] for i in auth.integrations(tmp_path)] == ["hook"]
    for name, role, code in (("hook", "events", 409), ("admin", "reader", 400),
                             ("Bad.Name", "reader", 400), ("ok", "root", 400)):
        with pytest.raises(auth.AuthError) as err:
            auth.create(tmp_path, name, role)
        assert err.value.code == code, name
    auth.revoke(tmp_path, "hook")
    assert not path.exists() and auth.integrations(tmp_path) == []
    assert '"user": "hook"' not in auth.Paths(tmp_path).auth_conf.read_text()
    with pytest.raises(auth.AuthError) as gone:
        auth.revoke(tmp_path, "hook")
    assert gone.value.code == 404
    with pytest.raises(auth.AuthError):
        auth.revoke(tmp_path, "instance")


def test_route_urls_carry_the_route_user(tmp_path):
    auth.init(tmp_path)
    urls = auth.route_urls(tmp_path, ["a:6222", "b:6222"])
    password = json.loads(auth.Paths(tmp_path).registry.read_text())["route"]["password"]
    assert urls == f"[nats-route://route:{password}@a:6222, nats-route://route:{password}@b:6222]"


def test_reload_signals_only_a_nats_server(tmp_path):
    paths = auth.Paths(tmp_path)
    assert auth.reload_server(tmp_path) is None  # no pid file
    paths.pid_file.parent.mkdir(parents=True)
    paths.pid_file.write_text(f"{os.getpid()}\n")  # this pytest: not a nats-server
    assert auth.reload_server(tmp_path) is None
