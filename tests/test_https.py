"""The remote API: server config, the HTTPS listener and LXD's trust model, with the stock
``lxc`` client and pylxd over HTTPS (loopback ports only)."""

from __future__ import annotations

import base64
import datetime
import grp
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from services.gateway import tls

from .stack import wait_for
from .world import lxc_conf, make_world

pytestmark = pytest.mark.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_client_cert(directory: Path, cn: str = "tester") -> tuple[Path, Path, str]:
    """A self-signed client certificate as ``lxc``/pylxd make theirs; (crt, key, fp)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA384()))
    directory.mkdir(parents=True, exist_ok=True)
    crt, keyf = directory / "client.crt", directory / "client.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return crt, keyf, tls.fingerprint(cert.public_bytes(serialization.Encoding.DER))


def https(port: int, cert: tuple[Path, Path] | None = None) -> httpx.Client:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30)


def peer_fingerprint(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as s:
        return tls.fingerprint(s.getpeercert(binary_form=True))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def patch(api: httpx.Client, config: dict, status: int = 200) -> httpx.Response:
    r = api.patch("/1.0", json={"config": config})
    assert r.status_code == status, r.text
    return r


@pytest.fixture
def clean_server(api):
    """Whatever a test sets on the server or trusts is gone after it."""
    before = set(api.get("/1.0/certificates").json()["metadata"])
    yield
    api.put("/1.0", json={"config": {}})
    for url in set(api.get("/1.0/certificates").json()["metadata"]) - before:
        api.delete(url)


@pytest.fixture
def port(api, clean_server):
    p = free_port()
    patch(api, {"core.https_address": f"127.0.0.1:{p}"})
    return p


def lxc(env: dict, *args: str, check: bool = True, stdin: str | None = None
        ) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True, timeout=120,
                       input=stdin)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


@pytest.fixture
def local_env(stack, tmp_path):
    """The stock client on the unix socket, with a config dir of its own."""
    return {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(tmp_path / "local")}


# -- server config --------------------------------------------------------------------

def test_unknown_and_unsupported_keys_refused_by_name(api, clean_server):
    r = patch(api, {"core.nonsense": "1"}, 400)
    assert "core.nonsense" in r.json()["error"] and "unknown" in r.json()["error"]
    r = patch(api, {"core.proxy_http": "http://x"}, 400)
    assert "core.proxy_http" in r.json()["error"] and "not supported" in r.json()["error"]
    r = patch(api, {"core.https_address": "127.0.0.1:notaport"}, 400)
    assert "port" in r.json()["error"]
    r = api.put("/1.0", json={"config": {"core.socket_group": "no-such-group-x"}})
    assert r.status_code == 400 and "no-such-group-x" in r.json()["error"]
    assert api.get("/1.0").json()["metadata"]["config"] == {}


def test_set_get_unset_with_the_stock_client(api, local_env, clean_server):
    p = free_port()
    lxc(local_env, "config", "set", "core.https_address", f"127.0.0.1:{p}")
    assert lxc(local_env, "config", "get", "core.https_address").stdout.strip() == \
        f"127.0.0.1:{p}"
    lxc(local_env, "config", "set", "user.note", "hello")
    lxc(local_env, "config", "set", "core.trust_password", "s3cret")
    config = api.get("/1.0").json()["metadata"]["config"]
    # the password is hidden; setting another key (a PUT of what was read) keeps it
    assert config == {"core.https_address": f"127.0.0.1:{p}", "core.trust_password": True,
                      "user.note": "hello"}
    r = lxc(local_env, "config", "set", "core.bogus", "1", check=False)
    assert r.returncode != 0 and "core.bogus" in r.stderr
    lxc(local_env, "config", "unset", "user.note")
    lxc(local_env, "config", "unset", "core.https_address")
    assert "user.note" not in api.get("/1.0").json()["metadata"]["config"]
    wait_for(lambda: refused(p), 5)


def test_get_1_0_describes_the_host(api, port):
    env = api.get("/1.0").json()["metadata"]["environment"]
    # LXD 5.0's keys, probed here (this host has them all but shiftfs)
    assert set(env["kernel_features"]) == {
        "idmapped_mounts", "netnsid_getifaddrs", "seccomp_listener",
        "seccomp_listener_continue", "shiftfs", "uevent_injection", "unpriv_fscaps"}
    assert env["kernel_features"]["seccomp_listener"] == "true"
    assert env["kernel_features"]["shiftfs"] == "false"
    if shutil.which("lxc-start"):
        assert env["lxc_features"]["cgroup2"] == "true" and len(env["lxc_features"]) == 14
    assert env["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert env["certificate_fingerprint"] == peer_fingerprint(port)
    assert env["addresses"] == [f"127.0.0.1:{port}"]
    meta = api.get("/1.0").json()["metadata"]
    assert {"certificate_token", "explicit_trust_token"} <= set(meta["api_extensions"])


# -- the listener -----------------------------------------------------------------------

def test_listener_follows_the_address(api, stack, clean_server):
    p1, p2 = free_port(), free_port()
    patch(api, {"core.https_address": f"127.0.0.1:{p1}"})
    fp = peer_fingerprint(p1)
    assert (stack.dir / "server.crt").exists()
    assert (stack.dir / "server.key").stat().st_mode & 0o077 == 0
    patch(api, {"core.https_address": f"127.0.0.1:{p2}"})
    assert refused(p1) and peer_fingerprint(p2) == fp  # same certificate, new port
    # a port someone else holds: 400, and the listener stays where it was
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        r = patch(api, {"core.https_address": f"127.0.0.1:{taken}"}, 400)
        assert str(taken) in r.json()["error"]
    assert peer_fingerprint(p2) == fp
    assert api.get("/1.0").json()["metadata"]["config"]["core.https_address"] == \
        f"127.0.0.1:{p2}"
    patch(api, {"core.https_address": ""})
    assert refused(p2)


async def test_a_change_stored_by_another_gateway_applies_at_once(api, bus, clean_server):
    """The config bucket is shared: a write that did not come through this gateway (as
    another gateway's would) rebinds this one's listener."""
    from shared.state import Store

    p = free_port()
    store = await Store(bus, "server_config").open()
    found = await store.get("config")
    value = {"config": {"core.https_address": f"127.0.0.1:{p}"}}
    if found:
        await store.update("config", value, found[1])
    else:
        await store.create("config", value)
    wait_for(lambda: not refused(p), 5)
    assert api.get("/1.0").json()["metadata"]["config"]["core.https_address"] == \
        f"127.0.0.1:{p}"


# -- trust ------------------------------------------------------------------------------

def test_untrusted_client_gets_the_untrusted_view_and_403(api, port, tmp_path, world):
    crt, key, _ = make_client_cert(tmp_path / "stranger")
    for cert in (None, (crt, key)):
        with https(port, cert) as c:
            meta = c.get("/1.0").json()["metadata"]
            assert meta["auth"] == "untrusted" and meta["auth_methods"] == ["tls"]
            assert "environment" not in meta and "config" not in meta
            for path in ("/1.0/instances", "/1.0/certificates", "/1.0/profiles",
                         "/1.0/operations", "/1.0/storage-pools"):
                r = c.get(path)
                assert r.status_code == 403 and r.json()["error"] == "not authorized", path
            assert c.patch("/1.0", json={"config": {}}).status_code == 403
            # a private image is not there for it; a public one is, with its export
            assert c.get(f"/1.0/images/{world.fingerprint}").status_code == 404
            assert c.get(f"/1.0/images/aliases/{world.image}").status_code == 404
            listed = c.get("/1.0/images").json()["metadata"]
            assert f"/1.0/images/{world.fingerprint}" not in listed
            assert c.post("/1.0/certificates", json={"password": "x"}).status_code == 403
    assert api.patch(f"/1.0/images/{world.fingerprint}", json={"public": True}
                     ).status_code == 200
    try:
        with https(port, (crt, key)) as c:
            r = c.get(f"/1.0/images/{world.fingerprint}")
            assert r.status_code == 200 and r.json()["metadata"]["public"] is True
            r = c.get(f"/1.0/images/{world.fingerprint}/export")
            assert r.status_code == 200 and len(r.content) > 1000
            assert f"/1.0/images/{world.fingerprint}" in c.get("/1.0/images").json()[
                "metadata"]
            full = c.get("/1.0/images?recursion=1").json()["metadata"]
            assert world.fingerprint in [i["fingerprint"] for i in full]
            assert all(i["public"] for i in full)
            r = c.get(f"/1.0/images/aliases/{world.image}")
            assert r.status_code == 200 and r.json()["metadata"]["target"] == \
                world.fingerprint
    finally:
        api.patch(f"/1.0/images/{world.fingerprint}", json={"public": False})


def test_trust_password_and_certificates_crud(api, port, tmp_path):
    patch(api, {"core.trust_password": "hunter2"})
    crt, key, fp = make_client_cert(tmp_path / "pw", cn="pw-client")
    with https(port, (crt, key)) as c:
        assert c.post("/1.0/certificates", json={"password": "wrong", "type": "client"}
                      ).status_code == 403
        r = c.post("/1.0/certificates", json={"password": "hunter2", "type": "client"})
        assert r.status_code == 201 and r.headers["Location"] == f"/1.0/certificates/{fp}"
        assert c.get("/1.0").json()["metadata"]["auth"] == "trusted"
        assert c.get("/1.0/instances").status_code == 200
        assert c.post("/1.0/certificates", json={"password": "hunter2"}).status_code == 400
    rec = api.get(f"/1.0/certificates/{fp[:12]}").json()["metadata"]
    assert rec["name"] == "pw-client" and rec["type"] == "client" and rec["fingerprint"] == fp
    assert f"/1.0/certificates/{fp}" in api.get("/1.0/certificates").json()["metadata"]
    assert api.patch(f"/1.0/certificates/{fp}", json={"name": "renamed"}).status_code == 200
    assert api.get(f"/1.0/certificates/{fp}").json()["metadata"]["name"] == "renamed"
    # adding a certificate as an admin (base64 DER, as `lxc config trust add FILE` sends)
    crt2, _, fp2 = make_client_cert(tmp_path / "second")
    der = tls.pem_to_der(crt2.read_text())
    r = api.post("/1.0/certificates", json={"certificate": base64.b64encode(der).decode(),
                                             "name": "second", "type": "client"})
    assert r.status_code == 201, r.text
    assert api.post("/1.0/certificates", json={"certificate": base64.b64encode(der).decode(),
                                                "type": "client"}).status_code == 409
    assert api.delete(f"/1.0/certificates/{fp2}").status_code == 200
    assert api.get(f"/1.0/certificates/{fp2}").status_code == 404
    # revoking a certificate makes its holder untrusted again at once
    assert api.delete(f"/1.0/certificates/{fp}").status_code == 200
    with https(port, (crt, key)) as c:
        assert c.get("/1.0").json()["metadata"]["auth"] == "untrusted"
        assert c.get("/1.0/instances").status_code == 403


def test_restricted_certificate_sees_only_its_projects(api, port, tmp_path):
    crt, key, fp = make_client_cert(tmp_path / "r")
    der = tls.pem_to_der(crt.read_text())
    r = api.post("/1.0/certificates", json={"certificate": base64.b64encode(der).decode(),
                                             "type": "client", "restricted": True,
                                             "projects": ["other"]})
    assert r.status_code == 201
    with https(port, (crt, key)) as c:
        meta = c.get("/1.0").json()["metadata"]
        assert meta["auth"] == "trusted" and meta["config"] == {}
        assert c.get("/1.0/instances").status_code == 403
        assert c.get("/1.0/instances?all-projects=true").status_code == 403
        assert c.patch("/1.0", json={"config": {"user.x": "1"}}).status_code == 403
        assert c.post("/1.0/certificates", json={"token": True, "name": "x",
                                                 "type": "client"}).status_code == 403
    assert api.patch(f"/1.0/certificates/{fp}", json={"projects": ["default"]}
                     ).status_code == 200
    assert api.get(f"/1.0/certificates/{fp}").json()["metadata"]["projects"] == ["default"]
    with https(port, (crt, key)) as c:
        assert c.get("/1.0/instances").status_code == 200
        # it may not lift its own restriction
        assert c.patch(f"/1.0/certificates/{fp}", json={"restricted": False}
                       ).status_code == 403


def test_token_with_the_stock_client(api, stack, port, local_env, tmp_path, world):
    out = lxc(local_env, "config", "trust", "add", "--name", "t").stdout
    token = out.strip().splitlines()[-1]
    doc = json.loads(base64.b64decode(token))
    assert doc["client_name"] == "t" and doc["addresses"] == [f"127.0.0.1:{port}"]
    assert doc["fingerprint"] == peer_fingerprint(port)
    ops = api.get("/1.0/operations?recursion=1").json()["metadata"]["running"]
    assert any(o["class"] == "token" and o["metadata"]["secret"] == doc["secret"]
               for o in ops)
    assert "t" in lxc(local_env, "config", "trust", "list-tokens").stdout

    remote_env = {**stack.env, "LXD_CONF": lxc_conf(tmp_path / "remote")}
    remote_env.pop("LXD_DIR", None)
    lxc(remote_env, "remote", "add", "c", token)
    name = world.name("rmt")
    lxc(remote_env, "launch", f"c:{world.image}", f"c:{name}", "-p", world.profile)
    try:
        rows = json.loads(lxc(remote_env, "list", "c:", "--format", "json").stdout)
        assert any(r["name"] == name and r["status"] == "Running" for r in rows)
        assert lxc(remote_env, "exec", f"c:{name}", "--", "echo", "hi").stdout.strip() == "hi"
    finally:
        lxc(remote_env, "delete", "--force", f"c:{name}", check=False)
        wait_for(lambda: api.get(f"/1.0/instances/{name}").status_code == 404, 20)
    certs = api.get("/1.0/certificates?recursion=1").json()["metadata"]
    assert any(c["name"] == "t" for c in certs)
    # single use: a second client cannot use it again
    again = {**stack.env, "LXD_CONF": lxc_conf(tmp_path / "again")}
    r = lxc(again, "remote", "add", "c", token, check=False)
    assert r.returncode != 0
    # and a client nobody trusted gets 403 from the same server
    stranger = {**stack.env, "LXD_CONF": lxc_conf(tmp_path / "stranger")}
    lxc(stranger, "remote", "add", "c", f"https://127.0.0.1:{port}", "--accept-certificate",
        "--password", "nope", check=False)
    r = lxc(stranger, "list", "c:", check=False)
    assert r.returncode != 0


def test_trust_password_with_the_stock_client(api, stack, port, tmp_path):
    patch(api, {"core.trust_password": "letmein"})
    env = {**stack.env, "LXD_CONF": lxc_conf(tmp_path / "pw")}
    lxc(env, "remote", "add", "c", f"https://127.0.0.1:{port}", "--accept-certificate",
        "--password", "letmein")
    assert lxc(env, "info", "c:").returncode == 0


def test_pylxd_authenticates_with_password_and_token(api, port, tmp_path, monkeypatch):
    pylxd = pytest.importorskip("pylxd")
    # pylxd pins a server certificate it finds under ~/.config/lxc (any earlier remote
    # named 127.0.0.1 on this host), even with verify=False: look elsewhere
    monkeypatch.setattr(pylxd.client, "CERTS_PATH", str(tmp_path / "pylxd-certs"))
    # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's verify=False
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    patch(api, {"core.trust_password": "pw-for-pylxd"})
    crt, key, fp = make_client_cert(tmp_path / "py1")
    client = pylxd.Client(endpoint=f"https://127.0.0.1:{port}", cert=(str(crt), str(key)),
                          verify=False)
    assert not client.trusted
    client.authenticate("pw-for-pylxd")
    assert client.trusted
    assert isinstance(client.instances.all(), list)

    r = api.post("/1.0/certificates", json={"token": True, "name": "py2", "type": "client"})
    assert r.status_code == 202, r.text
    md = r.json()["metadata"]["metadata"]
    token = base64.b64encode(json.dumps({
        "client_name": "py2", "fingerprint": md["fingerprint"], "addresses": md["addresses"],
        "secret": md["secret"], "expires_at": "0001-01-01T00:00:00Z"}).encode()).decode()
    crt2, key2, fp2 = make_client_cert(tmp_path / "py2")
    client2 = pylxd.Client(endpoint=f"https://127.0.0.1:{port}", cert=(str(crt2), str(key2)),
                           verify=False)
    assert not client2.trusted
    client2.authenticate(token)
    assert client2.trusted
    assert api.get(f"/1.0/certificates/{fp2}").json()["metadata"]["name"] == "py2"
    # the token is spent
    crt3, key3, _ = make_client_cert(tmp_path / "py3")
    client3 = pylxd.Client(endpoint=f"https://127.0.0.1:{port}", cert=(str(crt3), str(key3)),
                           verify=False)
    with pytest.raises(pylxd.exceptions.LXDAPIException):
        client3.authenticate(token)


def test_token_needs_a_listener_and_can_be_revoked(api, clean_server):
    r = api.post("/1.0/certificates", json={"token": True, "name": "x", "type": "client"})
    assert r.status_code == 400 and "core.https_address" in r.json()["error"]
    patch(api, {"core.https_address": f"127.0.0.1:{free_port()}"})
    r = api.post("/1.0/certificates", json={"token": True, "name": "x", "type": "client"})
    op = r.json()["metadata"]
    assert op["class"] == "token" and op["status"] == "Running"
    assert api.delete(f"/1.0/operations/{op['id']}").status_code == 200
    assert api.get(f"/1.0/operations/{op['id']}").json()["metadata"]["status"] == "Cancelled"


# -- the unix socket ----------------------------------------------------------------------

def test_unix_socket_is_roots_unless_a_group_is_named(api, stack, clean_server):
    st = os.stat(stack.socket)
    assert st.st_mode & 0o777 == 0o660 and st.st_uid == 0 and st.st_gid == 0
    group = grp.getgrnam("nogroup") if "nogroup" in {g.gr_name for g in grp.getgrall()} \
        else grp.getgrall()[-1]
    patch(api, {"core.socket_group": group.gr_name})
    assert os.stat(stack.socket).st_gid == group.gr_gid
    patch(api, {"core.socket_group": ""})
    assert os.stat(stack.socket).st_gid == 0


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


# -- the corral CLI -----------------------------------------------------------------------

def corral(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    from .stack import BIN

    r = subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                       text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_corral_cli_server_keys_and_trust(api, stack, tmp_path, clean_server):
    p = free_port()
    corral(stack, "config", "set", "core.https_address", f"127.0.0.1:{p}")
    assert corral(stack, "config", "get", "core.https_address").stdout.strip() == \
        f"127.0.0.1:{p}"
    assert peer_fingerprint(p)
    r = corral(stack, "config", "set", "core.nope", "1", check=False)
    assert r.returncode != 0 and "core.nope" in r.stderr
    token = corral(stack, "config", "trust", "add", "--name", "cli", "-q").stdout.strip()
    doc = json.loads(base64.b64decode(token))
    assert doc["client_name"] == "cli" and doc["addresses"] == [f"127.0.0.1:{p}"]
    assert token in corral(stack, "config", "trust", "list-tokens", "-f", "csv").stdout
    corral(stack, "config", "trust", "revoke-token", "cli")
    assert token not in corral(stack, "config", "trust", "list-tokens", "-f", "csv").stdout
    crt, _, fp = make_client_cert(tmp_path / "cli")
    corral(stack, "config", "trust", "add", str(crt), "--name", "from-file")
    listed = json.loads(corral(stack, "config", "trust", "list", "-f", "json").stdout)
    assert any(c["fingerprint"] == fp and c["name"] == "from-file" for c in listed)
    corral(stack, "config", "trust", "remove", fp[:16])
    assert api.get(f"/1.0/certificates/{fp}").status_code == 404
    corral(stack, "config", "unset", "core.https_address")
    assert refused(p)


async def test_lifecycle_events_name_the_https_client(api, bus, port, tmp_path, uid):
    import asyncio

    crt, key, fp = make_client_cert(tmp_path / "ev")
    der = tls.pem_to_der(crt.read_text())
    assert api.post("/1.0/certificates", json={
        "certificate": base64.b64encode(der).decode(), "type": "client"}).status_code == 201
    seen: list[dict] = []

    async def got(msg):
        seen.append(json.loads(msg.data))

    sub = await bus.subscribe("corral.events.lifecycle.>", got)
    await bus.nc.flush()  # subscribed at the server before the request
    try:
        with https(port, (crt, key)) as c:
            r = c.post("/1.0/profiles", json={"name": uid})
            assert r.status_code == 200, r.text
        for _ in range(50):
            mine = [e for e in seen if e["metadata"]["action"] == "profile-created"
                    and e["metadata"]["source"].endswith(uid)]
            if mine:
                break
            await asyncio.sleep(0.1)
        assert mine, seen
        req = mine[0]["metadata"]["requestor"]
        assert req["protocol"] == "tls" and req["username"] == fp
        assert req["address"].startswith("127.0.0.1:")
    finally:
        await sub.unsubscribe()
        api.delete(f"/1.0/profiles/{uid}")


def test_token_expiry(api, port):
    patch(api, {"core.remote_token_expiry": "1S"})
    r = api.post("/1.0/certificates", json={"token": True, "name": "late", "type": "client"})
    op = r.json()["metadata"]
    assert op["metadata"]["expiresAt"].endswith("Z")
    done = api.get(f"/1.0/operations/{op['id']}/wait?timeout=10").json()["metadata"]
    assert done["status"] == "Failure" and "expired" in done["err"]
    patch(api, {"core.remote_token_expiry": "1 hour"}, 400)
