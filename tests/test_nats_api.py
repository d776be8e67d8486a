"""The NATS-native API: JSON requests from any NATS client, the generated catalogue and its
document, and the typed Python client (shared.client) against the session's stack."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import nats
import pytest

from .stack import BIN, ROOT

pytestmark = pytest.mark.timeout(120)


def corral(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "corral"), *args, "--dir", str(stack.dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def credential(stack, uid):
    """An integration credential made by `corral bus credentials create`; revoked after."""
    made: list[str] = []

    def make(role: str, project: str | None = None) -> Path:
        name = f"{uid}-{role}"
        extra = ["--project", project] if project else []
        out = corral(stack, "bus", "credentials", "create", name, "--role", role, *extra)
        assert out.returncode == 0, out.stderr
        made.append(name)
        return Path(out.stdout.strip().splitlines()[-1])

    yield make
    for name in made:
        corral(stack, "bus", "credentials", "revoke", name)


async def connect_as(url: str, path: Path) -> nats.aio.client.Client:
    """A raw nats-py connection with a credential just made (the server reloads on SIGHUP)."""
    creds = json.loads(path.read_text())
    deadline = time.monotonic() + 10
    while True:
        try:
            return await nats.connect(url, user=creds["user"], password=creds["password"],
                                      inbox_prefix=creds["inbox_prefix"],
                                      allow_reconnect=False, connect_timeout=2)
        except Exception as exc:
            if "authorization violation" not in str(exc).lower() or \
                    time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_json_request_lists_instances_with_an_integration_credential(
        stack, nats_server, api, credential, uid):
    """What `nats req corral.instance.list '{"project":"default"}'` does, from nats-py."""
    name = f"{uid}-j"
    r = api.post("/1.0/profiles", json={"name": name})
    assert r.status_code == 200
    nc = await connect_as(nats_server.url, credential("reader"))
    try:
        msg = await nc.request("corral.instance.list", b'{"project":"default","recursion":1}',
                               headers={"Content-Type": "application/json"}, timeout=10)
        assert msg.headers and msg.headers.get("Content-Type") == "application/json"
        reply = json.loads(msg.data)
        assert reply["type"] == "sync" and isinstance(reply["metadata"], list)
        # No header at all, as `nats req` sends it: a JSON object is read as JSON.
        msg = await nc.request("corral.instance.profile_list", b'{"project": "default"}',
                               timeout=10)
        names = [p if isinstance(p, str) else p["name"] for p in json.loads(msg.data)["metadata"]]
        assert any(name in n for n in names)
        # A bad request is an error in JSON too, with LXD's code.
        msg = await nc.request("corral.instance.get", b'{"project":"default"}',
                               headers={"Content-Type": "application/json"}, timeout=10)
        assert msg.headers["Nats-Service-Error-Code"] == "400"
        err = json.loads(msg.data)
        assert err["type"] == "error" and err["error_code"] == 400 and "name" in err["error"]
        msg = await nc.request("corral.instance.get",
                               b'{"project":"default","name":"%s-none"}' % uid.encode(),
                               headers={"Content-Type": "application/json"}, timeout=10)
        assert json.loads(msg.data)["error_code"] == 404
    finally:
        await nc.close()
        api.delete(f"/1.0/profiles/{name}")


async def test_msgpack_stays_the_default(bus):
    from shared import codec

    msg = await bus.request_raw("corral.instance.profile_list", {"project": "default"})
    assert not (msg.headers or {}).get("Content-Type")
    assert codec.decode(msg.data)["type"] == "sync"


def test_docs_nats_api_md_is_generated_from_the_catalogue():
    """docs/nats-api.md is `corral bus schema --markdown`: a stale copy fails here."""
    from services import catalog

    fresh = catalog.to_markdown(catalog.build())
    doc = ROOT / "docs" / "nats-api.md"
    assert doc.read_text() == fresh, (
        "docs/nats-api.md is stale: run `make nats-api` (a bus verb was added or changed)")


def test_corral_bus_schema_prints_every_subject_with_schemas_roles_and_examples():
    """Without NATS (no server in its environment): the catalogue comes from the
    services' endpoint registrations."""
    out = subprocess.run([str(BIN / "corral"), "bus", "schema"], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                     "CORRAL_NATS_URL": "nats://127.0.0.1:1"})
    assert out.returncode == 0, out.stderr
    _check_catalogue(out.stdout)


def _check_catalogue(out: str) -> None:
    cat = json.loads(out)
    by_subject = {e["subject"]: e for e in cat["subjects"]}
    listing = by_subject["corral.instance.list"]
    assert {"reader", "operator", "reader --project"} <= set(listing["roles"])
    assert listing["project_subject"] == "corral.project.<project>.instance.list"
    assert "storage" in listing["callers"]
    assert "PUT /1.0/instances/{name}/state" in by_subject["corral.instance.state_put"][
        "lxd_routes"]
    # exec hands out a shell: never a reader's; node verbs have no project form
    assert "reader" not in by_subject["corral.instance.exec"]["roles"]
    node = by_subject["corral.node.<node>.storage.volume_create"]
    assert node["project_subject"] is None and node["roles"] == ["operator"]
    for e in cat["subjects"]:
        name = e["request"]["$ref"].rsplit("/", 1)[-1]
        schema = cat["schemas"][name]
        assert set(e["example"]) <= set(schema["properties"]), e["subject"]
        assert set(schema.get("required", [])) <= set(e["example"]), e["subject"]
    assert cat["schemas"]["Reply"]["properties"]["type"]["enum"] == ["sync", "async"]
    assert cat["events"]["stream"] == "CORRAL_EVENTS"
    assert cat["events"]["id_header"] == "Nats-Msg-Id"


def test_the_client_and_its_methods_are_generated_and_import_without_the_services():
    """shared/client/api.py is `python -m services.catalog --client`; importing the client
    loads nothing from services/ (nor the services' tracing and logging)."""
    import sys

    from services import catalog

    api = ROOT / "shared" / "client" / "api.py"
    assert api.read_text() == catalog.client_module(), (
        "shared/client/api.py is stale: run `make nats-api` (a bus verb was added or changed)")
    probe = ("import sys, shared.client; "
             "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    top = set(eval(out.stdout))
    assert "services" not in top and "opentelemetry" not in top and "structlog" not in top
    assert {"shared", "nats"} <= top


async def test_client_requests_events_replay_and_operation_watch(
        stack, nats_server, bus, credential, uid):
    """Requests by method, the events iterator (live ids, replay from a sequence and from
    a time), and an operation watched to its end, with an operator credential."""
    import asyncio
    from datetime import datetime, timezone

    from shared.client import Client, CorralError
    from shared.client.client import ID_HEADER as CLIENT_ID_HEADER
    from shared.events import ID_HEADER, Events
    from shared.operations import Operations

    assert CLIENT_ID_HEADER == ID_HEADER
    path = credential("operator")
    await connect_as(nats_server.url, path)  # waits until the server has reloaded its users
    name = f"{uid}-c"
    started = datetime.now(timezone.utc)
    async with await Client.connect(path, nats_server.url) as c:
        first_seq = (await c.nc.jetstream().stream_info("CORRAL_EVENTS")).state.last_seq + 1
        await c.instances.profile_create(body={"name": name, "description": "by client"})
        reply = await c.instances.profile_get(name=name)
        assert reply.metadata["description"] == "by client"
        names = (await c.instances.profile_list(project="default")).metadata
        assert any(name in str(n) for n in names)
        with pytest.raises(CorralError) as err:
            await c.instances.get(name=f"{uid}-none")
        assert err.value.code == 404
        with pytest.raises(TypeError, match="unknown field"):
            await c.instances.get(nmae="c1")

        async def created(**since):
            async for ev in c.events(types=["lifecycle"], **since):
                if ev.metadata.get("source") == f"/1.0/profiles/{name}":
                    return ev

        by_seq = await asyncio.wait_for(created(since_seq=first_seq), 10)
        assert by_seq.metadata["action"] == "profile-created"
        assert by_seq.metadata["requestor"]["username"] == path.stem
        assert len(by_seq.id) == 36 and by_seq.seq >= first_seq
        by_time = await asyncio.wait_for(created(since_time=started), 10)
        assert (by_time.id, by_time.seq) == (by_seq.id, by_seq.seq)

        # An operation watched from its start to its end.
        ops = await Operations(bus, Events(bus)).open()
        go = asyncio.Event()

        async def work(handle):
            await go.wait()
            await handle.progress("stage", 50)

        op = await ops.start("Watched", work)
        states = []

        async def watch():
            async for state in c.watch_operation(op.id):
                states.append(state["status"])
                if len(states) == 1:
                    go.set()

        await asyncio.wait_for(watch(), 10)
        assert states[0] in ("Pending", "Running") and states[-1] == "Success"
        final = await asyncio.wait_for(c.wait_operation(op.id), 5)  # ended: answers at once
        assert final["status"] == "Success" and final["id"] == op.id
        await c.instances.profile_delete(name=name)


async def test_json_request_with_a_project_credential_stays_in_its_project(
        nats_server, credential):
    """A credential limited to a project calls the corral.project.<p> form; the body's
    project must be that project (403 in JSON otherwise)."""
    nc = await connect_as(nats_server.url, credential("reader", project="default"))
    try:
        msg = await nc.request("corral.project.default.instance.list",
                               b'{"project":"default"}', timeout=10)
        assert json.loads(msg.data)["type"] == "sync"
        msg = await nc.request("corral.project.default.instance.list",
                               b'{"project":"other"}', timeout=10)
        err = json.loads(msg.data)
        assert err["error_code"] == 403 and "limited to project" in err["error"]
    finally:
        await nc.close()


async def test_an_events_credential_replays_the_stream_with_the_client(
        nats_server, api, credential, uid):
    """The `events` role (no requests) reads the stream from a sequence: what a hooks-like
    integration does."""
    import asyncio

    from shared.client import Client

    path = credential("events")
    await (await connect_as(nats_server.url, path)).close()
    async with await Client.connect(path, nats_server.url) as c:
        start = (await c.nc.jetstream().stream_info("CORRAL_EVENTS")).state.last_seq + 1
        assert api.post("/1.0/profiles", json={"name": uid}).status_code == 200
        try:
            async def first():
                async for ev in c.events(types=["lifecycle"], project="default",
                                         since_seq=start):
                    if ev.metadata.get("source") == f"/1.0/profiles/{uid}":
                        return ev

            ev = await asyncio.wait_for(first(), 10)
            assert ev.metadata["action"] == "profile-created" and ev.id and ev.seq >= start
        finally:
            api.delete(f"/1.0/profiles/{uid}")


async def test_the_client_with_a_project_credential_uses_the_project_subjects(
        nats_server, api, credential, uid):
    """Limited to a project: requests go to corral.project.<p>.<svc>.<verb> with that
    project filled in, and events come live from that project's subjects."""
    import asyncio

    from shared.client import Client, CorralError

    path = credential("operator", project="default")
    await (await connect_as(nats_server.url, path)).close()
    async with await Client.connect(path, nats_server.url) as c:
        assert c.project == "default"
        assert c.subject("instance", "list") == "corral.project.default.instance.list"

        async def created():
            async for ev in c.events(types=["lifecycle"]):
                if ev.metadata.get("source") == f"/1.0/profiles/{uid}":
                    return ev

        watcher = asyncio.ensure_future(created())
        await asyncio.sleep(0.3)  # the live subscription is in place
        await c.instances.profile_create(body={"name": uid})
        try:
            ev = await asyncio.wait_for(watcher, 10)
            assert ev.project == "default" and ev.seq is None and ev.id
            names = (await c.instances.profile_list()).metadata
            assert any(uid in str(n) for n in names)
            with pytest.raises(CorralError) as err:
                await c.instances.profile_list(project="other")
            assert err.value.code == 403
        finally:
            api.delete(f"/1.0/profiles/{uid}")


def test_corral_bus_events_replays_through_the_client(stack, nats_server, api, credential,
                                                      uid):
    path = credential("events")
    assert api.post("/1.0/profiles", json={"name": uid}).status_code == 200
    try:
        t0 = time.monotonic()
        out = subprocess.run(
            [str(BIN / "corral"), "bus", "events", "--credentials", str(path),
             "--url", nats_server.url, "--since-seq", "1", "--type", "lifecycle",
             "--project", "default", "--count", "2"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        # it ends once it has its events (it waited out nats-py's 30 s drain timeout)
        assert time.monotonic() - t0 < 20, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == 2 and all(e["type"] == "lifecycle" for e in lines)
        assert lines[0]["seq"] < lines[1]["seq"] and len(lines[0]["id"]) == 36
        bad = corral(stack, "bus", "events", "--credentials", str(path), "--since", "later")
        assert bad.returncode != 0 and "ISO 8601" in bad.stderr
    finally:
        api.delete(f"/1.0/profiles/{uid}")
