"""Pure logic of the remote API: server config keys, the trust password, addresses, tokens
and the access policy (no services, no network)."""

from __future__ import annotations

import base64
import json
import ssl

import pytest

from services.gateway import server_config as sc
from services.gateway import tls, trust
from shared.errors import BadRequest, Forbidden


def test_patch_merges_put_replaces_and_empty_unsets():
    cur = {"core.https_address": ":8443", "user.a": "1"}
    assert sc.apply_changes(cur, {"config": {"user.b": "2"}}, replace=False) == {
        **cur, "user.b": "2"}
    assert sc.apply_changes(cur, {"config": {"user.b": "2"}}, replace=True) == {"user.b": "2"}
    assert sc.apply_changes(cur, {"config": {"user.a": ""}}, replace=False) == {
        "core.https_address": ":8443"}
    assert sc.apply_changes(cur, {"config": {"user.a": None}}, replace=False) == {
        "core.https_address": ":8443"}
    assert cur == {"core.https_address": ":8443", "user.a": "1"}  # untouched


def test_unknown_and_lxd_only_keys_are_named():
    with pytest.raises(BadRequest, match="'core.nope'.*unknown"):
        sc.apply_changes({}, {"config": {"core.nope": "1"}}, replace=False)
    with pytest.raises(BadRequest, match="'images.compression_algorithm'.*not supported"):
        sc.apply_changes({}, {"config": {"images.compression_algorithm": "xz"}},
                         replace=False)
    with pytest.raises(BadRequest, match="expected an object"):
        sc.apply_changes({}, {"config": ["x"]}, replace=False)
    with pytest.raises(BadRequest, match="expected a string"):
        sc.apply_changes({}, {"config": {"user.x": {"a": 1}}}, replace=False)


def test_trust_password_is_hashed_hidden_and_kept_by_true():
    new = sc.apply_changes({}, {"config": {"core.trust_password": "pw"}}, replace=False)
    stored = new["core.trust_password"]
    assert stored != "pw" and len(bytes.fromhex(stored)) == 32 + 64
    assert sc.check_password(stored, "pw") and not sc.check_password(stored, "pW")
    assert not sc.check_password("", "pw") and not sc.check_password("zz", "pw")
    assert sc.render(new) == {"core.trust_password": True}
    # `lxc config set other.key` PUTs back what it read: `true` keeps the password
    again = sc.apply_changes(new, {"config": {"core.trust_password": True, "user.x": "1"}},
                             replace=True)
    assert again["core.trust_password"] == stored
    # left out of a PUT: removed
    assert "core.trust_password" not in sc.apply_changes(new, {"config": {}}, replace=True)
    assert sc.etag(dict(new)) == sc.etag(new)  # stable per content
    assert sc.etag({"user.x": "1"}) != sc.etag({"user.x": "2"})


def test_expiry_expressions_as_lxd():
    assert sc.expiry_seconds("30M") == 1800
    assert sc.expiry_seconds("1d 12H") == 86400 + 12 * 3600
    for bad in ("1x", "1H 2H", "H", "-1H"):
        with pytest.raises(BadRequest):
            sc.expiry_seconds(bad)


@pytest.mark.parametrize("address,expected", [
    (":8443", (None, 8443)), ("127.0.0.1", ("127.0.0.1", 8443)),
    ("127.0.0.1:9000", ("127.0.0.1", 9000)), ("[::1]:9000", ("::1", 9000)),
    ("::1", ("::1", 8443)), ("0.0.0.0:1", (None, 1)), ("[::]:8443", (None, 8443)),
])
def test_https_address_forms(address, expected):
    assert tls.parse_address(address) == expected


@pytest.mark.parametrize("bad", ["1.2.3.4:x", "1.2.3.4:70000", "[::1", "[::1]x", " "])
def test_bad_https_addresses(bad):
    with pytest.raises(BadRequest):
        tls.parse_address(bad)


def test_listen_addresses_of_a_named_host():
    assert tls.listen_addresses("127.0.0.1:9000") == ["127.0.0.1:9000"]
    assert tls.listen_addresses("[::1]:9000") == ["[::1]:9000"]
    assert tls.listen_addresses("") == []


def test_server_certificate_and_fingerprint(tmp_path):
    crt, key = tls.ensure_server_certificate(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    der = tls.pem_to_der(crt.read_text())
    assert tls.fingerprint(der) == __import__("hashlib").sha256(der).hexdigest()
    assert tls.pem_to_der(tls.der_to_pem(der)) == der
    again = tls.ensure_server_certificate(tmp_path)  # kept, not remade
    assert tls.pem_to_der(again[0].read_text()) == der
    ctx = tls.server_context(crt, key)  # the verify callback installs on this Python
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(BadRequest):
        tls.pem_to_der("not a certificate")


def test_tokens_round_trip_and_passwords_are_not_tokens():
    tok = trust.encode_token("c1", "ab" * 32, ["127.0.0.1:8443"], "s3cret")
    doc = json.loads(base64.b64decode(tok))
    assert set(doc) == {"client_name", "fingerprint", "addresses", "secret", "expires_at"}
    assert trust.decode_token(tok)["secret"] == "s3cret"
    assert trust.decode_token("hunter2") is None
    assert trust.decode_token(base64.b64encode(b'{"secret":"x"}').decode()) is None
    assert trust.decode_token(base64.b64encode(b"[1]").decode()) is None


def _who(**kw) -> trust.Identity:
    return trust.Identity(protocol="tls", **kw)


def test_access_policy():
    check = trust.check_access
    check(trust.ROOT, "DELETE", "/1.0/instances/{name}", "default", False)
    admin = _who(trusted=True)
    check(admin, "PATCH", "/1.0", "default", True)
    untrusted = _who(trusted=False)
    for method, route in (("GET", "/1.0"), ("POST", "/1.0/certificates"),
                          ("GET", "/1.0/images/{name}"), ("GET", "/1.0/images/{name}/export")):
        check(untrusted, method, route, "default", False)
    for method, route in (("GET", "/1.0/instances"), ("PATCH", "/1.0"),
                          ("GET", "/1.0/certificates"), ("DELETE", "/1.0/images/{name}"),
                          ("GET", "/1.0/events")):
        with pytest.raises(Forbidden):
            check(untrusted, method, route, "default", False)
    limited = _who(trusted=True, restricted=True, projects=("default",))
    check(limited, "GET", "/1.0/instances", "default", False)
    check(limited, "GET", "/1.0", "other", False)
    with pytest.raises(Forbidden):
        check(limited, "GET", "/1.0/instances", "other", False)
    with pytest.raises(Forbidden):
        check(limited, "GET", "/1.0/instances", "default", True)
    with pytest.raises(Forbidden):
        check(limited, "PUT", "/1.0", "default", False)
    with pytest.raises(Forbidden):
        check(limited, "POST", "/1.0/storage-pools", "default", False)
    nothing = _who(trusted=True, restricted=True)
    with pytest.raises(Forbidden):
        check(nothing, "GET", "/1.0/instances", "default", False)


async def test_without_its_buckets_the_remote_api_says_503_not_500(tmp_path):
    """A gateway whose bus user may not open server_config/certificates (an old auth.conf)
    keeps serving the socket; config and trust writes answer 503 saying why."""
    from types import SimpleNamespace

    from services.gateway.remote import RemoteAPI
    from shared.errors import Unavailable

    ctx = SimpleNamespace(config=SimpleNamespace(dir=tmp_path,
                                                 socket_path=tmp_path / "unix.socket"),
                          bus=None)
    remote = RemoteAPI(ctx)
    with pytest.raises(Unavailable, match="server_config"):
        await remote.update({"config": {"user.x": "1"}}, False, None)
    with pytest.raises(Unavailable):
        await remote.trust.add({"fingerprint": "ab"})
    assert remote.stored == {} and not remote.check_trust_password("x")
