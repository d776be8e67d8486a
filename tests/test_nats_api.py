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
        "docs/nats-api.md is stale: run `corral bus schema --markdown > docs/nats-api.md`")


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
