"""Who may use the bus: nats-server itself refuses what a connection's user may not do.

Against the session's stack (its nats-server runs with the authorization `make up`
generates): no anonymous connection, not even from an unprivileged local user; a service's
user cannot send another service's commands; integration credentials made with
`corral bus credentials create` get their role and nothing more; a revoked one is cut off
without a server restart; nobody but the gateway and the instance service reads the
exec/console byte streams.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import auth, codec, subjects

from .stack import BIN

pytestmark = pytest.mark.timeout(120)


class Conn:
    """A NATS connection as one user, keeping what the server reported."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.aio.client.Client | None = None
        self.disconnected = asyncio.Event()

    async def open(self, url: str, creds: dict[str, str]) -> "Conn":
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        async def on_disconnect() -> None:
            self.disconnected.set()

        self.nc = await nats.connect(url, error_cb=on_error, disconnected_cb=on_disconnect,
                                     allow_reconnect=False, connect_timeout=2,
                                     user=creds["user"], password=creds["password"],
                                     inbox_prefix=creds["inbox_prefix"])
        return self

    async def violation(self, what: str, subject: str, timeout: float = 3.0) -> bool:
        """True once the server reported a permission violation for ``subject``."""
        needle = f'permissions violation for {what} to "{subject}"'.lower()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def creds_of(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def corral(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "corral"), *args, "--dir", str(stack.dir)],
                          capture_output=True, text=True, timeout=30)


async def connect_new(url: str, creds: dict[str, str]) -> Conn:
    """Connect with a credential just made: the server reloads its users on SIGHUP."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await Conn().open(url, creds)
        except Exception as exc:
            if "authorization violation" not in str(exc).lower() or \
                    time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
def integration(stack, uid):
    """``corral bus credentials create`` for one role; revoked at the end."""
    made: list[str] = []

    def make(role: str) -> dict[str, str]:
        name = f"{uid}-{role}"
        out = corral(stack, "bus", "credentials", "create", name, "--role", role)
        assert out.returncode == 0, out.stderr
        path = Path(out.stdout.strip().splitlines()[-1])
        assert path == stack.dir / "credentials" / f"{name}.json"
        made.append(name)
        return creds_of(path)

    yield make
    for name in made:
        corral(stack, "bus", "credentials", "revoke", name)


NOBODY_PROBE = textwrap.dedent("""
    import socket, sys
    port, paths = int(sys.argv[1]), sys.argv[2:]
    for p in paths:
        try:
            open(p).read()
            print("READ", p)
        except PermissionError:
            print("DENIED", p)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.recv(65536)  # INFO
    # What nats-py sends first: CONNECT without credentials, then a request.
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\\r\\n'
              b'SUB _INBOX.x 1\\r\\nPUB corral.instance.list _INBOX.x 0\\r\\n\\r\\nPING\\r\\n')
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(data.decode(errors="replace"))
""")


def test_nobody_gets_no_connection_and_cannot_read_credentials(stack, nats_server):
    """The issue's attack, as the unprivileged user `nobody`: refused by the server."""
    files = [nats_server.admin, nats_server.credentials("instance"),
             nats_server.paths.auth_conf, nats_server.paths.registry]
    for path in files:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, path
    creds_dir = nats_server.paths.credentials_dir.stat()
    assert stat.S_IMODE(creds_dir.st_mode) == 0o700 and creds_dir.st_uid == 0
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
         "-c", NOBODY_PROBE, str(nats_server.port), *map(str, files)],
        capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "READ" not in out.stdout and out.stdout.count("DENIED") == len(files)
    assert "-ERR 'Authorization Violation'" in out.stdout
    assert "MSG" not in out.stdout  # no answer from the instance service


async def test_no_credentials_no_connection(nats_server):
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=2)
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=2,
                           user="instance", password="guessed")


async def test_a_service_cannot_send_another_services_command(stack, nats_server):
    conn = await Conn().open(nats_server.url, creds_of(nats_server.credentials("network")))
    try:
        # What the network service calls is allowed (and answered) ...
        reply = await conn.nc.request(subjects.service("instance", "network_users"),
                                      codec.encode({"network": "nope"}), timeout=5)
        assert reply.data or reply.headers  # an answer, even an error one
        # ... creating an instance is not: the server drops it and says so.
        create = subjects.service("instance", "create")
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.request(create, codec.encode({"name": "x"}), timeout=1)
        assert await conn.violation("publish", create)
        # Nor may it answer for another service or read its bucket.
        await conn.nc.subscribe(subjects.service("instance", "list"))
        assert await conn.violation("subscription", subjects.service("instance", "list"))
        with pytest.raises(nats.errors.TimeoutError):  # the JS API request was dropped
            await conn.nc.jetstream(timeout=1).key_value("instances")
    finally:
        await conn.close()


async def test_events_credential_replays_events_but_sends_no_command(api, nats_server,
                                                                    integration, uid):
    creds = integration("events")
    assert creds["role"] == "events" and creds["inbox_prefix"] == f"_INBOX_{uid}-events"
    assert api.post("/1.0/profiles", json={"name": uid}).status_code == 200
    api.delete(f"/1.0/profiles/{uid}")
    conn = await connect_new(nats_server.url, creds)
    try:
        js = conn.nc.jetstream(timeout=3)
        seen: list[dict] = []
        done = asyncio.Event()

        async def on_event(msg):
            event = json.loads(msg.data)
            seen.append(event)
            if event["metadata"].get("source") == f"/1.0/profiles/{uid}":
                done.set()

        sub = await js.subscribe("corral.events.lifecycle.>", stream=subjects.EVENTS_STREAM,
                                 ordered_consumer=True, cb=on_event,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        await asyncio.wait_for(done.wait(), 10)  # replayed from the stream
        await sub.unsubscribe()

        listing = subjects.service("instance", "list")
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.request(listing, codec.encode({}), timeout=1)
        assert await conn.violation("publish", listing)
        with pytest.raises(nats.errors.TimeoutError):  # not the events role's bucket
            await js.key_value("instances")
        assert await conn.violation("publish", "$JS.API.STREAM.INFO.KV_instances")
        with pytest.raises(nats.errors.TimeoutError):  # nor may it purge the stream
            await js.purge_stream(subjects.EVENTS_STREAM)
        assert await conn.violation("publish", f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}")
    finally:
        await conn.close()


async def test_reader_lists_but_cannot_create_or_listen_to_exec(nats_server, integration):
    conn = await connect_new(nats_server.url, integration("reader"))
    try:
        reply = await conn.nc.request(subjects.service("instance", "list"),
                                      codec.encode({}), timeout=5)
        assert "metadata" in codec.decode(reply.data)
        create = subjects.service("instance", "create")
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.request(create, codec.encode({"name": "x"}), timeout=1)
        assert await conn.violation("publish", create)
        for subject in ("corral.streams.*.*.out", "corral.streams.>"):
            await conn.nc.subscribe(subject)
            assert await conn.violation("subscription", subject)
    finally:
        await conn.close()


async def test_only_gateway_and_instance_use_the_byte_streams(nats_server, integration):
    """Exec/console bytes: an operator, another service or root's admin cannot listen."""
    out = "corral.streams.op1.0.out"
    users = {"operator": integration("operator"), "storage": None, auth.ADMIN: None}
    for user, creds in users.items():
        creds = creds or creds_of(nats_server.credentials(user))
        conn = await connect_new(nats_server.url, creds)
        try:
            await conn.nc.subscribe(out)
            assert await conn.violation("subscription", out), user
            await conn.nc.publish("corral.streams.op1.0.in", b"ls\n")
            assert await conn.violation("publish", "corral.streams.op1.0.in"), user
        finally:
            await conn.close()
    perms = {u: auth.permissions_of(u, {}) for u in ("gateway", "instance")}
    assert "corral.streams.*.*.out" in perms["gateway"].subscribe
    assert "corral.streams.*.*.in" in perms["instance"].subscribe


async def test_revoked_credential_is_cut_off_without_restart(stack, nats_server, uid):
    name = f"{uid}-gone"
    made = corral(stack, "bus", "credentials", "create", name, "--role", "reader")
    assert made.returncode == 0, made.stderr
    creds = creds_of(Path(made.stdout.strip().splitlines()[-1]))
    listed = corral(stack, "bus", "credentials", "list", "--format", "json")
    assert {"name": name, "role": "reader"}.items() <= next(
        c for c in json.loads(listed.stdout) if c["name"] == name).items()
    server_pid = nats_server.proc.pid
    conn = await connect_new(nats_server.url, creds)
    try:
        revoked = corral(stack, "bus", "credentials", "revoke", name)
        assert revoked.returncode == 0, revoked.stderr
        await asyncio.wait_for(conn.disconnected.wait(), 10)  # the server closed it
    finally:
        await conn.close()
    with pytest.raises(Exception, match="Authorization Violation"):
        await Conn().open(nats_server.url, creds)
    assert not (stack.dir / "credentials" / f"{name}.json").exists()
    assert nats_server.proc.pid == server_pid and nats_server.proc.poll() is None
    again = corral(stack, "bus", "credentials", "revoke", name)
    assert again.returncode == 1 and "not found" in again.stderr


def test_cli_refuses_bad_names_and_builtin_users(stack):
    bad = corral(stack, "bus", "credentials", "create", "Bad.Name", "--role", "reader")
    assert bad.returncode == 2 and "Invalid credential name" in bad.stderr
    builtin = corral(stack, "bus", "credentials", "create", "gateway", "--role", "reader")
    assert builtin.returncode == 2 and "built-in" in builtin.stderr
    revoke = corral(stack, "bus", "credentials", "revoke", "instance")
    assert revoke.returncode == 2 and "built-in" in revoke.stderr
    role = corral(stack, "bus", "credentials", "create", "x", "--role", "root")
    assert role.returncode == 2 and "invalid choice" in role.stderr
