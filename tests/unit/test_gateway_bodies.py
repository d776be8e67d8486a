"""The gateway's bounds on what clients send: JSON bodies, LXD's shapes, body size, and
host paths kept out of error messages. Pure logic: no stack."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.gateway import limits
from services.gateway.bodies import MAX_DEPTH, decode
from services.gateway.scrub import scrub
from shared.errors import BadRequest
from shared.messages.lxd import BODIES, check_body

# -- JSON ---------------------------------------------------------------------------------

def test_ordinary_bodies_decode_as_json() -> None:
    assert decode(b"") == {} and decode(b"  \n") == {}
    assert decode(b'{"config": {"limits.cpu": "2"}, "n": -9223372036854775808, "f": 1.5}') \
        == {"config": {"limits.cpu": "2"}, "n": -(2 ** 63), "f": 1.5}
    assert decode(b'{"x": 9223372036854775807}') == {"x": 2 ** 63 - 1}


@pytest.mark.parametrize("raw, words", [
    (b'{"a": {"b": [1, 18446744073709551616]}}', "a.b[1]: 18446744073709551616 is out of range"),
    (b'{"a": 9223372036854775808}', "a: 9223372036854775808 is out of range"),
    (b'{"a": -9223372036854775809}', "out of range"),
    (b'{"a": ' + b"7" * 5000 + b"}", "a: 77777777777777777777..."),
    (b'{"a": NaN}', "NaN is not a number"),
    (b'{"a": [Infinity]}', "Infinity is not a number"),
    (b'{"a": 1e999}', "Invalid value for a: the number is too large"),
    (b'{"a": "\\udc00"}', "Invalid value for a: it holds an unpaired UTF-16 surrogate"),
    (b'{"\\ud800": 1}', "Invalid key for \ud800"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
    (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nested deeper than 64"),
    (b"{nope", "Invalid JSON in request body"),
    (b"\xff\xfe", "Invalid JSON in request body"),
])
def test_json_the_bus_cannot_carry_is_a_400_naming_the_field(raw: bytes, words: str) -> None:
    with pytest.raises(BadRequest) as err:
        decode(raw)
    assert words in err.value.message


def test_depth_bound_is_64_levels() -> None:
    ok = b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH
    assert decode(ok)
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert decode(ok) is not None


# -- LXD's shapes -------------------------------------------------------------------------

def test_shapes_refuse_what_lxds_go_decoder_refuses() -> None:
    with pytest.raises(BadRequest, match=r"type: Input should be a valid string \(got a list\)"):
        check_body("network", "create", {"name": "n", "type": ["bridge"]})
    with pytest.raises(BadRequest, match=r"config\.limits\.cpu: .*string \(got a number\)"):
        check_body("instance", "update", {"config": {"limits.cpu": 2}})
    with pytest.raises(BadRequest, match=r"devices\.eth0\.mtu"):
        check_body("instance", "profile_create", {"devices": {"eth0": {"mtu": 1500}}})
    with pytest.raises(BadRequest, match=r"ephemeral.*\(got a string\)"):
        check_body("instance", "create", {"ephemeral": "true"})
    with pytest.raises(BadRequest, match=r"user"):
        check_body("instance", "exec", {"command": ["id"], "user": 2 ** 32})
    with pytest.raises(BadRequest, match=r"source\.alias"):
        check_body("instance", "create", {"source": {"alias": 5}})


def test_shapes_let_lxds_own_bodies_through() -> None:
    body = {"name": "c1", "source": {"type": "image", "alias": "busybox", "base-image": "ab"},
            "config": {"limits.memory": "64MiB"}, "profiles": ["default"], "start": True,
            "devices": {"root": {"type": "disk", "path": "/", "pool": "p"}},
            "newer_field": {"any": [1, "thing"]}}
    assert check_body("instance", "create", body) == body
    exec_post = {"command": ["sh"], "wait-for-websocket": True, "interactive": True,
                 "environment": {"TERM": "xterm"}, "width": 80, "height": 24, "user": 1000,
                 "group": 1000, "cwd": "/", "record-output": False}
    assert check_body("instance", "exec", exec_post) == exec_post
    # Verbs without a model pass as they are.
    assert check_body("instance", "get", {"recursion": 1}) == {"recursion": 1}


def test_null_is_not_given_as_in_go() -> None:
    assert check_body("instance", "profile_update", {"config": None, "devices": None,
                                                     "description": None, "x": None}) \
        == {"x": None}


def test_every_model_names_a_real_bus_verb() -> None:
    """The table's keys must be the (service, verb) pairs the gateway's routes send."""
    from services.gateway.routes import ROUTES
    from services.gateway.routing import Ask

    sent = {(r.handler.service, r.handler.verb) for r in ROUTES if isinstance(r.handler, Ask)}
    sent.add(("image", "create"))  # routes/images.create asks it directly for JSON bodies
    sent.add(("instance", "create"))  # so does routes/backups.create_or_import
    sent.add(("instance", "rename"))  # routes/migration.instance_post (not a migration)
    assert set(BODIES) <= sent, set(BODIES) - sent


# -- body size ----------------------------------------------------------------------------

async def _respond(request: web.Request) -> web.Response:
    return web.Response(text="read")


async def test_declared_length_above_the_limit_is_a_413_before_any_read() -> None:
    mw = limits.body_limit(2048)
    big = make_mocked_request("POST", "/1.0/profiles", headers={"Content-Length": "2049"})
    r = await mw(big, _respond)
    assert r.status == 413 and b"Request body too large" in r.body
    small = make_mocked_request("POST", "/1.0/profiles", headers={"Content-Length": "2048"})
    assert (await mw(small, _respond)).text == "read"


async def test_aiohttps_own_413_gets_lxds_envelope() -> None:
    async def reads_too_much(_request: web.Request) -> web.Response:
        raise web.HTTPRequestEntityTooLarge(max_size=2048, actual_size=4096)

    r = await limits.body_limit(2048)(make_mocked_request("POST", "/1.0/profiles"),
                                      reads_too_much)
    assert r.status == 413 and b'"error_code":413' in r.body


def test_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV, raising=False)
    assert limits.max_body_size() == 64 * 1024 ** 2
    monkeypatch.setenv(limits.ENV, "1048576")
    assert limits.max_body_size() == 1048576
    for bad in ("lots", "12"):
        monkeypatch.setenv(limits.ENV, bad)
        with pytest.raises(ValueError, match=limits.ENV):
            limits.max_body_size()


def test_streaming_routes_are_exempt() -> None:
    from services.gateway.routes import images, instance_io

    assert getattr(images.create, "streams_body", False)
    assert getattr(instance_io.file_push, "streams_body", False)


# -- host paths ---------------------------------------------------------------------------

D = "/var/lib/corral"


@pytest.mark.parametrize("message, shown", [
    ("Internal error in the instance service: [Errno 2] No such file or directory: "
     "'/proc/8385/root/proc/self'",
     "Internal error in the instance service: [Errno 2] No such file or directory: "
     "'/proc/self'"),
    ("[Errno 18] Invalid cross-device link: '/proc/12/root/a' -> '/proc/12/root/b'",
     "[Errno 18] Invalid cross-device link: '/a' -> '/b'"),
    (f"[Errno 13] Permission denied: '{D}/storage-pools/p/containers/c1/rootfs/etc/x'",
     "[Errno 13] Permission denied: '/etc/x'"),
    (f"mkdir {D}/storage-pools/p/containers/c1/rootfs failed", "mkdir / failed"),
    (f"qemu: {D}/storage-pools/p/virtual-machines/v1/rootfs.img: locked",
     "qemu: $CORRAL_DIR/storage-pools/p/virtual-machines/v1/rootfs.img: locked"),
    (f"[Errno 2] No such file: '{D}/storage-pools/p/containers/c1/rootfs/srv/rootfs/x'",
     "[Errno 2] No such file: '/srv/rootfs/x'"),
    (f'{{"err": "open {D}/logs/a.log: denied", "x": "{D}/x/rootfs/etc"}}',
     '{"err": "open $CORRAL_DIR/logs/a.log: denied", "x": "/etc"}'),
    (f"cannot mount {D}/storage-pools/p1: busy", "cannot mount $CORRAL_DIR/storage-pools/p1: busy"),
    # The client's own instance path is left as it is, /proc/1/root included.
    ("File '/proc/1/root/x' does not exist in the instance",
     "File '/proc/1/root/x' does not exist in the instance"),
    ("Instance not found", "Instance not found"),
])
def test_error_messages_show_no_host_path(message: str, shown: str) -> None:
    assert scrub(message, D) == shown
