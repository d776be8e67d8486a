"""Automation hooks (issue 14): real deliveries from the events stream.

A webhook receiver runs on loopback in the test, nats-server and the services are the
session's, containers are real (tests/world.py). Cheap events for ordering come from
profiles (each create is one ``profile-created`` lifecycle event).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nats
import pytest

from services.hooks import rules

from .stack import BIN, free_port, private_stack, socket_client, wait_for
from .world import make_world

ROOT_OK = os.geteuid() == 0 and Path("/bin/busybox").exists() and shutil.which("lxc")


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it gets; may be stopped and
    started again on the same port, and told to answer slowly or with an error."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.got: list[dict] = []
        self.delay = 0.0
        self.status = 200
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.delay:
                    time.sleep(outer.delay)
                if outer.status == 200:
                    outer.got.append({"headers": dict(self.headers), "body": body,
                                      "event": json.loads(body)})
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def sources(self) -> list[str]:
        return [g["event"]["metadata"].get("source", "") for g in self.got]


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def hooks(api):
    """Names of hooks a test made; deleted at the end."""
    made: list[str] = []
    yield made
    for name in made:
        api.delete(f"/1.0/hooks/{name}")


@pytest.fixture
def profiles(api):
    made: list[str] = []
    yield made
    for name in made:
        api.delete(f"/1.0/profiles/{name}")


def add_hook(api, hooks: list[str], body: dict) -> dict:
    r = api.post("/1.0/hooks", json=body)
    assert r.status_code == 200, r.text
    hooks.append(body["name"])
    return r.json()["metadata"]


def make_profiles(api, made: list[str], prefix: str, n: int) -> list[str]:
    names = [f"{prefix}-{i:03d}" for i in range(n)]
    for name in names:
        assert api.post("/1.0/profiles", json={"name": name}).status_code == 200
        made.append(name)
    return names


def corral(stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=60, input=stdin)


# -- the API and its bad input --------------------------------------------------------------


def test_extension_advertised(api):
    assert "corral_hooks" in api.get("/1.0").json()["metadata"]["api_extensions"]


def test_bad_input_rest(api, hooks, uid):
    name = f"h{uid}"
    good = {"name": name, "type": "lifecycle", "action": "profile-created",
            "webhook": {"url": "http://127.0.0.1:9/"}}
    for body, words in [
        ({**good, "webhook": None}, "exactly one action"),
        ({**good, "publish": {"subject": "x.y"}}, "exactly one action"),
        ({**good, "name": "Bad Name"}, "Invalid hook name"),
        ({**good, "type": "nope"}, "Invalid hook type"),
        ({**good, "webhook": {"url": "ftp://x/"}}, "Invalid webhook URL"),
        ({**good, "webhook": None, "publish": {"subject": "corral.instance.delete"}},
         "Invalid publish subject"),
        ({**good, "webhook": None, "publish": {"subject": "a.*"}}, "Invalid publish subject"),
        ({**good, "webhook": None, "run": {"verb": "nosuch.thing"}}, "no service"),
        ({**good, "retries": -1}, "retries"),
        ({**good, "surprise": 1}, "surprise"),
    ]:
        r = api.post("/1.0/hooks", json=body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["error"], (body, r.json()["error"])
    assert api.get(f"/1.0/hooks/{name}").status_code == 404  # nothing half made
    add_hook(api, hooks, good)
    r = api.post("/1.0/hooks", json=good)
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    for method, path in [("GET", "/1.0/hooks/nosuch"), ("DELETE", "/1.0/hooks/nosuch"),
                         ("PUT", "/1.0/hooks/nosuch"), ("GET", "/1.0/hooks/nosuch/log"),
                         ("POST", "/1.0/hooks/nosuch/test")]:
        r = api.request(method, path, json={} if method in ("PUT", "POST") else None)
        assert r.status_code == 404, (method, path, r.text)
        assert "Hook 'nosuch' not found" in r.json()["error"]
    r = api.put(f"/1.0/hooks/{name}", json={**good, "type": "nope"})
    assert r.status_code == 400
    assert api.get(f"/1.0/hooks/{name}").json()["metadata"]["type"] == "lifecycle"


def test_cli_add_list_show_edit_log_test_delete(stack, api, hooks, receiver, uid):
    name = f"c{uid}"
    r = corral(stack, "hook", "add", name, "--on", "lifecycle:instance-started",
               "--webhook", receiver.url, "--secret", "s3cret", "--match", "name=web*")
    assert r.returncode == 0, r.stderr
    hooks.append(name)
    hook = api.get(f"/1.0/hooks/{name}").json()["metadata"]
    assert hook["webhook"] == {"url": receiver.url, "secret": "(set)", "timeout": 5.0}
    assert hook["match"] == {"name": "web*"} and hook["action"] == "instance-started"
    r = corral(stack, "hook", "list", "--format", "json")
    assert name in [h["name"] for h in json.loads(r.stdout)]
    r = corral(stack, "hook", "show", name)
    assert r.returncode == 0 and "s3cret" not in r.stdout
    r = corral(stack, "hook", "edit", name, stdin=yaml_dump({**hook, "action": "instance-*"}))
    assert r.returncode == 0, r.stderr
    hook = api.get(f"/1.0/hooks/{name}").json()["metadata"]
    assert hook["action"] == "instance-*" and hook["webhook"]["secret"] == "(set)"
    r = corral(stack, "hook", "test", name)
    assert r.returncode == 0, r.stderr
    [got] = receiver.got
    assert rules.verify("s3cret", got["body"], got["headers"]["X-Corral-Signature"])
    r = corral(stack, "hook", "log", name, "--format", "json")
    assert json.loads(r.stdout)[-1]["status"] == "delivered"
    # bad input through the CLI: each fails with a message, and makes nothing
    for args, words in [
        (("add", f"x{uid}", "--on", "lifecycle:x"), "exactly one of"),
        (("add", f"x{uid}", "--on", "lifecycle:x", "--publish", "a", "--webhook", "http://a/"),
         "exactly one of"),
        (("add", f"x{uid}", "--on", "lifecycle", "--run", "instance.snapshot_create", "{"),
         "does not parse"),
        (("add", f"x{uid}", "--on", "lifecycle", "--match", "novalue", "--publish", "a.b"),
         "KEY=GLOB"),
        (("add", f"x{uid}", "--on", "lifecycle", "--webhook", "gopher://x"),
         "Invalid webhook URL"),
        (("add", name, "--on", "lifecycle", "--webhook", receiver.url), "already exists"),
        (("show", "nosuch"), "not found"),
        (("delete", "nosuch"), "not found"),
    ]:
        r = corral(stack, "hook", *args)
        assert r.returncode != 0, args
        assert words in r.stderr, (args, r.stderr)
    assert api.get(f"/1.0/hooks/x{uid}").status_code == 404
    r = corral(stack, "hook", "delete", name)
    assert r.returncode == 0, r.stderr
    hooks.remove(name)
    assert api.get(f"/1.0/hooks/{name}").status_code == 404


def yaml_dump(doc: dict) -> str:
    import yaml
    return yaml.safe_dump(doc)


# -- deliveries ---------------------------------------------------------------------------


def test_receiver_down_then_up_gets_every_event_in_order(api, hooks, profiles, receiver,
                                                         uid):
    prefix = f"rd{uid}"
    add_hook(api, hooks, {"name": prefix, "type": "lifecycle", "action": "profile-created",
                          "match": {"name": f"{prefix}-*"}, "retries": 20,
                          "webhook": {"url": receiver.url, "secret": "k", "timeout": 2}})
    receiver.stop()
    names = make_profiles(api, profiles, prefix, 12)
    time.sleep(3)
    assert receiver.got == []
    receiver.start()
    want = [f"/1.0/profiles/{n}" for n in names]
    wait_for(lambda: len(set(receiver.sources())) == len(want), 60, what="every event")
    firsts = list(dict.fromkeys(receiver.sources()))  # order of first arrival
    assert firsts == want
    for got in receiver.got:
        assert rules.verify("k", got["body"], got["headers"]["X-Corral-Signature"])
        assert got["headers"]["X-Corral-Event-Id"]
    log = api.get(f"/1.0/hooks/{prefix}/log").json()["metadata"]
    assert log[0]["attempts"] > 1 and all(e["status"] == "delivered" for e in log)


def test_hooks_service_killed_midway_loses_nothing(stack, api, hooks, profiles, receiver,
                                                   uid):
    prefix = f"hk{uid}"
    add_hook(api, hooks, {"name": prefix, "type": "lifecycle", "action": "profile-created",
                          "match": {"name": f"{prefix}-*"},
                          "webhook": {"url": receiver.url}})
    receiver.delay = 0.2
    names = make_profiles(api, profiles, prefix, 20)
    wait_for(lambda: len(receiver.got) >= 3, 30, what="the first deliveries")
    proc = stack.procs["hooks"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    got_then = len(set(receiver.sources()))
    assert got_then < len(names)
    more = make_profiles(api, profiles, prefix + "-b", 3)  # while the service is away
    stack.start("hooks")
    want = [f"/1.0/profiles/{n}" for n in names + more]
    wait_for(lambda: set(receiver.sources()) >= set(want), 90, what="every event")
    firsts = [s for s in dict.fromkeys(receiver.sources())]
    assert firsts == want
    ids = {g["headers"]["X-Corral-Event-Id"] for g in receiver.got}
    assert len(ids) == len(want)  # a redelivered event carries the same id


async def test_publish_hook_reaches_a_subscriber(api, hooks, profiles, nats_server, uid):
    subject = f"integration.{uid}.events"
    nc = await nats.connect(nats_server.url, **nats_server.connect_options())
    sub = await nc.subscribe(subject)
    await nc.flush()
    prefix = f"pb{uid}"
    add_hook(api, hooks, {"name": prefix, "type": "lifecycle", "action": "profile-*",
                          "match": {"name": f"{prefix}-*"}, "publish": {"subject": subject}})
    try:
        [name] = await asyncio.to_thread(make_profiles, api, profiles, prefix, 1)
        msg = await sub.next_msg(timeout=20)  # the credential's reload may cost a retry
        event = json.loads(msg.data)
        assert event["metadata"]["source"] == f"/1.0/profiles/{name}"
        assert msg.headers["X-Corral-Event-Id"]
        assert msg.headers["X-Corral-Hook"] == prefix
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_publish_hook_credential_reaches_only_its_subject(nats_server, api, hooks, uid):
    """The hook's own credential: its subject yes, a Corral verb no."""
    prefix = f"pc{uid}"
    add_hook(api, hooks, {"name": prefix, "type": "lifecycle", "publish": {"subject": "a.b"}})
    creds = json.loads(nats_server.credentials(f"hook-{prefix}").read_text())
    errors: list = []

    async def on_error(exc):
        errors.append(exc)

    nc = await nats.connect(nats_server.url, user=creds["user"], password=creds["password"],
                            inbox_prefix=creds["inbox_prefix"], error_cb=on_error)
    try:
        await nc.publish("a.b", b"{}")
        await nc.publish("corral.instance.list", b"")
        await nc.flush()
        await asyncio.sleep(0.3)
        assert any("corral.instance.list" in str(e) for e in errors), errors
        assert not any("a.b" in str(e).split("corral")[0] for e in errors if "a.b\"" in str(e))
    finally:
        await nc.close()
    api.delete(f"/1.0/hooks/{prefix}")
    hooks.remove(prefix)
    assert not nats_server.credentials(f"hook-{prefix}").exists()


@pytest.mark.skipif(not ROOT_OK, reason="needs root, busybox-static and lxc")
@pytest.mark.parametrize("driver", ["dir", "btrfs"])
def test_instance_started_webhook_and_snapshot_command(stack, api, hooks, receiver,
                                                       busybox_tarball, driver):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver=driver) as w:
        name = w.create("c1")
        add_hook(api, hooks, {"name": f"{w.prefix}w", "type": "lifecycle",
                              "action": "instance-started", "match": {"name": name},
                              "webhook": {"url": receiver.url, "secret": "s3cret"}})
        add_hook(api, hooks, {"name": f"{w.prefix}r", "type": "lifecycle",
                              "action": "instance-started", "match": {"name": name},
                              "run": {"verb": "instance.snapshot_create",
                                      "body": {"name": "auto-{timestamp}"}}})
        w.state(name, "start")
        wait_for(lambda: receiver.got, 30, what="the webhook")
        [got] = receiver.got
        assert got["event"]["metadata"]["action"] == "instance-started"
        assert got["event"]["metadata"]["source"] == f"/1.0/instances/{name}"
        sig = got["headers"]["X-Corral-Signature"]
        assert sig.startswith("sha256=") and rules.verify("s3cret", got["body"], sig)
        assert not rules.verify("wrong", got["body"], sig)
        assert got["headers"]["X-Corral-Event-Id"]

        def snapshots() -> list[str]:
            r = api.get(f"/1.0/instances/{name}/snapshots", params={"recursion": 1})
            return [s["name"] for s in r.json()["metadata"]]
        wait_for(lambda: snapshots(), 60, what="the hook's snapshot")
        [snap] = snapshots()
        assert snap.startswith("auto-")
        def log() -> list[dict]:
            return api.get(f"/1.0/hooks/{w.prefix}r/log").json()["metadata"]
        wait_for(log, 30, what="the run hook's log")
        assert log()[-1]["status"] == "delivered", log()
        assert log()[-1]["result"].endswith("Success"), log()  # it waited for the snapshot
        w.state(name, "stop", force=True)


def test_failed_delivery_goes_to_dead_letter_and_log(api, hooks, profiles, receiver, uid,
                                                     nats_server):
    prefix = f"dl{uid}"
    receiver.status = 500
    seen: list = []

    async def listen() -> None:
        nc = await nats.connect(nats_server.url, **nats_server.connect_options())
        sub = await nc.subscribe(f"corral.hooks.dead.{prefix}")
        ev = await nc.subscribe("corral.events.lifecycle.default.hook-delivery")
        await nc.flush()
        add_hook(api, hooks, {"name": prefix, "type": "lifecycle",
                              "action": "profile-created", "match": {"name": f"{prefix}-*"},
                              "retries": 2, "webhook": {"url": receiver.url}})
        await asyncio.to_thread(make_profiles, api, profiles, prefix, 1)
        msg = await sub.next_msg(timeout=20)
        seen.append(msg)
        while True:
            e = json.loads((await ev.next_msg(timeout=10)).data)
            if e["metadata"]["source"] == f"/1.0/hooks/{prefix}":
                seen.append(e)
                break
        await nc.close()

    asyncio.run(listen())
    assert seen[0].headers["X-Corral-Hook"] == prefix
    assert "HTTP 500" in seen[0].headers["X-Corral-Error"]
    assert seen[1]["metadata"]["action"] == "hook-delivery-failed"
    log = api.get(f"/1.0/hooks/{prefix}/log").json()["metadata"]
    assert log[-1]["status"] == "failed" and log[-1]["attempts"] == 3


def test_hook_events_created_and_deleted(api, hooks, uid, receiver, nats_server):
    name = f"ev{uid}"

    async def watch() -> list[dict]:
        nc = await nats.connect(nats_server.url, **nats_server.connect_options())
        sub = await nc.subscribe("corral.events.lifecycle.default.hook")
        await nc.flush()
        add_hook(api, hooks, {"name": name, "type": "lifecycle",
                              "webhook": {"url": receiver.url}})
        assert api.delete(f"/1.0/hooks/{name}").status_code == 200
        hooks.remove(name)
        seen = []
        while len(seen) < 2:
            e = json.loads((await sub.next_msg(timeout=10)).data)
            if e["metadata"]["source"] == f"/1.0/hooks/{name}":
                seen.append(e)
        await nc.close()
        return seen

    seen = asyncio.run(watch())
    assert [e["metadata"]["action"] for e in seen] == ["hook-created", "hook-deleted"]
    assert api.get(f"/1.0/hooks/{name}").status_code == 404


@pytest.fixture(scope="module")
def hstack(request):
    with private_stack(request, "hooks") as s:
        yield s


def test_nats_server_restart_loses_nothing(hstack, receiver):
    """Deliveries pending while nats-server restarts (the receiver away too) all arrive,
    in order, after it is back: the durable consumer and its position are on disk."""
    with socket_client(hstack) as api:
        made: list[str] = []
        add_hook(api, [], {"name": "nr", "type": "lifecycle", "action": "profile-created",
                           "match": {"name": "nr-*"}, "webhook": {"url": receiver.url}})
        names = make_profiles(api, made, "nr-a", 3)
        wait_for(lambda: len(receiver.got) >= 3, 30, what="the first deliveries")
        receiver.stop()
        names += make_profiles(api, made, "nr-b", 3)
        hstack.nats.stop()
        time.sleep(1)
        hstack.nats.start()
        receiver.start()
        wait_for(lambda: hstack.ready(), 60, what="the stack after the restart")
        names += make_profiles(api, made, "nr-c", 3)
        want = [f"/1.0/profiles/{n}" for n in names]
        wait_for(lambda: set(receiver.sources()) >= set(want), 90, what="every event")
        assert list(dict.fromkeys(receiver.sources())) == want


# -- the examples ---------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_webhook_receiver(stack, api, hooks, uid):
    import hashlib
    import hmac

    import httpx

    port = free_port()
    proc = subprocess.Popen([str(BIN / "python"), str(EXAMPLES / "webhook_receiver.py"),
                             str(port)], env={**os.environ, "CORRAL_HOOK_SECRET": "s3cret"},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening")
        name = f"ex{uid}"
        add_hook(api, hooks, {"name": name, "type": "lifecycle", "action": "instance-started",
                              "webhook": {"url": f"http://127.0.0.1:{port}/",
                                          "secret": "s3cret"}})
        r = corral(stack, "hook", "test", name)
        assert r.returncode == 0, r.stderr
        line = proc.stdout.readline()
        assert "instance-started" in line and f"/1.0/hooks/{name}" in line
        body = b'{"type":"lifecycle","timestamp":"t","metadata":{"action":"x"}}'
        sig = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        url = f"http://127.0.0.1:{port}/"
        assert httpx.post(url, content=body, headers={"X-Corral-Signature": "sha256=00"}
                          ).status_code == 401
        for _ in range(2):  # a repeat of the same id is answered, not printed again
            assert httpx.post(url, content=body, headers={
                "X-Corral-Signature": sig, "X-Corral-Event-Id": "same"}).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.count("id=same") == 1


@pytest.mark.skipif(not ROOT_OK, reason="needs root, busybox-static and lxc")
def test_example_snapshot_before_config(stack, api, busybox_tarball, uid):
    cred = f"ops{uid}"
    r = corral(stack, "bus", "credentials", "create", cred, "--role", "operator",
               "--dir", str(stack.dir))
    assert r.returncode == 0, r.stderr
    try:
        with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
            names = [w.create("a"), w.create("b")]
            time.sleep(1)  # the credential's reload
            r = subprocess.run(
                [str(BIN / "python"), str(EXAMPLES / "snapshot_before_config.py"),
                 str(stack.nats.credentials(cred)), "user.note=changed", *names],
                env={**os.environ, "CORRAL_NATS_URL": stack.nats.url,
                     "PYTHONPATH": str(EXAMPLES.parent)},
                capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            for name in names:
                snaps = api.get(f"/1.0/instances/{name}/snapshots", params={"recursion": 1}
                                ).json()["metadata"]
                assert [s["name"].startswith("pre-config-") for s in snaps] == [True]
                assert "user.note" not in snaps[0]["config"]  # taken before the change
                assert w.get(name)["config"]["user.note"] == "changed"
    finally:
        corral(stack, "bus", "credentials", "revoke", cred, "--dir", str(stack.dir))


def test_crash_mid_create_leaves_nothing(stack, api, nats_server, uid):
    """Killed after the consumer and the credential, before the record: the next start
    removes both, and the name is free again."""
    name = f"cr{uid}"
    body = {"name": name, "type": "lifecycle", "publish": {"subject": f"crash.{uid}"}}
    env = dict(stack.env)
    stack.stop("hooks")
    stack.env = {**env, "CORRAL_FAULT": "hooks:after_consumer"}
    try:
        stack.start("hooks")
        wait_for(lambda: api.get("/1.0/hooks").status_code == 200, 60, what="hooks")
        assert api.post("/1.0/hooks", json=body).status_code == 503
        stack.procs["hooks"].wait(10)
        assert nats_server.credentials(f"hook-{name}").exists()  # the crash left it
    finally:
        stack.env = env
        stack.stop("hooks")
        stack.start("hooks")
    wait_for(lambda: api.get("/1.0/hooks").status_code == 200, 60, what="hooks again")
    assert api.get(f"/1.0/hooks/{name}").status_code == 404
    assert not nats_server.credentials(f"hook-{name}").exists()

    async def consumers() -> list[str]:
        nc = await nats.connect(nats_server.url, **nats_server.connect_options())
        names = [c.name for c in await nc.jetstream().consumers_info("CORRAL_EVENTS")]
        await nc.close()
        return names
    assert f"hook-{name}" not in asyncio.run(consumers())
    r = api.post("/1.0/hooks", json=body)
    assert r.status_code == 200, r.text
    api.delete(f"/1.0/hooks/{name}")


def test_patch_changes_the_action_and_its_credential(api, hooks, nats_server, receiver, uid):
    name = f"pa{uid}"
    add_hook(api, hooks, {"name": name, "type": "lifecycle", "action": "profile-created",
                          "webhook": {"url": receiver.url, "secret": "s"}})
    cred = nats_server.credentials(f"hook-{name}")
    assert not cred.exists()  # a webhook needs no bus credential
    r = api.patch(f"/1.0/hooks/{name}", json={"action": "profile-*", "retries": 2})
    assert r.status_code == 200, r.text
    hook = api.get(f"/1.0/hooks/{name}").json()["metadata"]
    assert hook["action"] == "profile-*" and hook["webhook"]["secret"] == "(set)"
    assert set(hook["status"]) == {"pending", "in_flight", "delivered_seq"}
    r = api.patch(f"/1.0/hooks/{name}", json={"publish": {"subject": f"p.{uid}"}})
    assert r.status_code == 200, r.text
    assert "webhook" not in api.get(f"/1.0/hooks/{name}").json()["metadata"]
    assert json.loads(cred.read_text())["user"] == f"hook-{name}"
    r = api.patch(f"/1.0/hooks/{name}", json={"publish": {"subject": "corral.x"}})
    assert r.status_code == 400  # refused whole: the publish hook stays as it was
    assert api.get(f"/1.0/hooks/{name}").json()["metadata"]["publish"] == {
        "subject": f"p.{uid}"}
    r = api.patch(f"/1.0/hooks/{name}", json={"name": "other"})
    assert r.status_code == 400 and "cannot be renamed" in r.json()["error"]
    r = api.put(f"/1.0/hooks/{name}", json={"type": "lifecycle",
                                            "webhook": {"url": receiver.url}})
    assert r.status_code == 200, r.text
    assert not cred.exists()  # back to a webhook: the credential is revoked


def test_run_hook_of_a_project_acts_under_a_project_credential(api, hooks, nats_server, uid):
    project, name = f"hp{uid[1:6]}", f"pr{uid}"
    assert api.post("/1.0/projects", json={"name": project}).status_code == 200
    try:
        add_hook(api, hooks, {"name": name, "type": "lifecycle", "action": "profile-created",
                              "project": project,
                              "run": {"verb": "instance.profile_patch",
                                      "body": {"description": "seen by {event_id}"}}})
        creds = json.loads(nats_server.credentials(f"hook-{name}").read_text())
        assert creds["role"] == "operator" and creds["project"] == project
        q = {"project": project}
        assert api.post("/1.0/profiles", params=q, json={"name": "p1"}).status_code == 200
        assert api.post("/1.0/profiles", json={"name": f"{name}x"}).status_code == 200

        def described() -> str:
            return api.get("/1.0/profiles/p1", params=q).json()["metadata"]["description"]
        wait_for(lambda: described().startswith("seen by "), 30, what="the hook's patch")
        time.sleep(1)  # the default project's profile is not the hook's
        assert api.get(f"/1.0/profiles/{name}x").json()["metadata"]["description"] == ""
        log = api.get(f"/1.0/hooks/{name}/log").json()["metadata"]
        assert [e["status"] for e in log] == ["delivered"]
    finally:
        api.delete(f"/1.0/profiles/{name}x")
        api.delete("/1.0/profiles/p1", params={"project": project})
        api.delete(f"/1.0/hooks/{name}")
        api.delete(f"/1.0/projects/{project}")


def test_an_edit_keeps_the_order(api, hooks, profiles, receiver, uid):
    """A changed hook gets a new runner: the old one's pull request, still waiting on the
    server, must not take the next events away (they would come back late, out of
    order)."""
    prefix = f"ed{uid}"
    add_hook(api, hooks, {"name": prefix, "type": "lifecycle", "action": "profile-created",
                          "match": {"name": f"{prefix}-*"}, "webhook": {"url": receiver.url}})
    names = make_profiles(api, profiles, prefix + "-a", 3)
    wait_for(lambda: len(receiver.got) >= 3, 30, what="the first deliveries")
    assert api.patch(f"/1.0/hooks/{prefix}", json={"retries": 3}).status_code == 200
    names += make_profiles(api, profiles, prefix + "-b", 5)
    want = [f"/1.0/profiles/{n}" for n in names]
    started = time.monotonic()
    wait_for(lambda: set(receiver.sources()) >= set(want), 30, what="every event")
    assert time.monotonic() - started < 8  # not after an ack_wait (10 s)
    assert list(dict.fromkeys(receiver.sources())) == want
