"""Bad input is a 4xx (issue 9): each body, query or header that once made a 5xx, exactly.

One test per defect, through the HTTP API of a real stack. The fuzzer (test_fuzz.py)
finds such requests; each one found lands here as a plain test, so it stays fixed even if
the fuzzer's examples change.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from services.gateway.limits import DEFAULT_MAX_BODY

from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root (the stack manages kernel objects)", allow_module_level=True)


def _error(r, code: int, *words: str) -> str:
    """The LXD error envelope with ``code``, whose message holds every one of ``words``."""
    assert r.status_code == code, r.text
    body = r.json()
    assert body["type"] == "error" and body["error_code"] == code, body
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


def _post_raw(api, path: str, raw: bytes):
    return api.post(path, content=raw, headers={"Content-Type": "application/json"})


# -- JSON the bus cannot carry -----------------------------------------------------------

def test_integer_of_64_bits_or_more_in_config_is_a_400(api, uid):
    r = _post_raw(api, "/1.0/instances",
                  b'{"name": "%s", "config": {"limits.cpu": 18446744073709551616}}'
                  % uid.encode())
    _error(r, 400, "config.limits.cpu", "64 bits")


def test_integer_of_64_bits_or_more_in_an_unknown_field_is_a_400(api, uid):
    # Fields LXD does not know pass the shape check; msgpack still cannot carry them.
    r = _post_raw(api, "/1.0/profiles", b'{"name": "%s", "x": {"y": [-%s]}}'
                  % (uid.encode(), b"9" * 5000))
    _error(r, 400, "x.y[0]", "64 bits")


def test_nan_and_infinity_are_a_400(api, uid):
    for raw in (b'{"name": "%s", "x": NaN}', b'{"name": "%s", "x": -Infinity}',
                b'{"name": "%s", "x": 1e400}'):
        _error(_post_raw(api, "/1.0/profiles", raw % uid.encode()), 400)
    assert api.get(f"/1.0/profiles/{uid}").status_code == 404


def test_deeply_nested_json_is_a_400(api):
    deep = b"[" * 100_000 + b"]" * 100_000
    _error(_post_raw(api, "/1.0/instances", deep), 400, "nested deeper than 64")
    deep = b'{"a":' * 65 + b"1" + b"}" * 65  # just past the bound, not Python's
    _error(_post_raw(api, "/1.0/profiles", deep), 400, "nested deeper than 64")


def test_lone_surrogate_in_a_string_is_a_400(api):
    r = _post_raw(api, "/1.0/profiles", b'{"name": "p\\ud800"}')
    _error(r, 400, "name", "surrogate")


def test_body_that_is_not_an_object_is_a_400(api):
    for raw in (b"[1]", b'"x"', b"3", b"null", b"true"):
        _error(_post_raw(api, "/1.0/networks", raw), 400, "expected a JSON object")


# -- shapes: LXD's types for every field --------------------------------------------------

def test_network_type_that_is_a_list_is_a_400(api, uid):
    r = api.post("/1.0/networks", json={"name": uid, "type": ["bridge"]})
    _error(r, 400, "type", "string")
    assert api.get(f"/1.0/networks/{uid}").status_code == 404


@pytest.mark.parametrize("path, body, field", [
    ("/1.0/instances", {"config": {"limits.cpu": 2}}, "config.limits.cpu"),
    ("/1.0/instances", {"devices": {"eth0": "nic"}}, "devices.eth0"),
    ("/1.0/instances", {"devices": {"root": {"size": 10}}}, "devices.root.size"),
    ("/1.0/instances", {"profiles": "default"}, "profiles"),
    ("/1.0/instances", {"source": ["image"]}, "source"),
    ("/1.0/profiles", {"config": ["a"]}, "config"),
    ("/1.0/profiles", {"description": 5}, "description"),
    ("/1.0/storage-pools", {"driver": {"dir": 1}}, "driver"),
    ("/1.0/storage-pools", {"config": {"size": True}}, "config.size"),
    ("/1.0/images/aliases", {"target": 1}, "target"),
])
def test_wrong_types_are_a_400_naming_the_field(api, uid, path, body, field):
    r = api.post(path, json={"name": uid, **body})
    _error(r, 400, "Invalid request body", field)


def test_null_where_lxd_allows_it_is_not_given(api, uid):
    r = api.post("/1.0/profiles", json={"name": uid, "config": None, "devices": None,
                                        "description": None})
    assert r.status_code == 200, r.text
    try:
        got = api.get(f"/1.0/profiles/{uid}").json()["metadata"]
        assert got["config"] == {} and got["devices"] == {} and got["description"] == ""
    finally:
        api.delete(f"/1.0/profiles/{uid}")


def test_exec_ids_beyond_32_bits_are_a_400(api, uid):
    r = api.post(f"/1.0/instances/{uid}/exec", json={"command": ["true"], "user": 2 ** 40})
    _error(r, 400, "user")


# -- query strings and headers ------------------------------------------------------------

def test_recursion_beyond_64_bits_is_a_400(api):
    for path in ("/1.0/instances", "/1.0/storage-pools/p/volumes/container",
                 "/1.0/instances/x", "/1.0/operations"):
        r = api.get(path, params={"recursion": "99999999999999999999"})
        _error(r, 400, "recursion")


def test_operation_wait_timeout_that_is_no_number_is_a_400(api):
    # float() took "nan" and "inf": a deadline of NaN never comes.
    for timeout in ("nan", "inf", "-inf", "1e999", "soon"):
        r = api.get("/1.0/operations/0b4f3c2e-2f5c-4a4e-9c86-0d3e2f0f8c11/wait",
                    params={"timeout": timeout})
        _error(r, 400, "Invalid timeout")


def test_file_push_ids_beyond_32_bits_are_a_400(api, uid):
    r = api.post(f"/1.0/instances/{uid}/files", params={"path": "/x"}, content=b"",
                 headers={"X-LXD-uid": "99999999999999999999"})
    _error(r, 400, "X-LXD-uid")
    r = api.post(f"/1.0/instances/{uid}/files", params={"path": "/x"}, content=b"",
                 headers={"X-LXD-mode": "77777"})
    _error(r, 400, "X-LXD-mode")


def test_multipart_upload_without_its_boundary_is_a_400(api):
    r = api.post("/1.0/images", content=b"",
                 headers={"Content-Type": "multipart/form-data; boundary=x"})
    _error(r, 400, "multipart")


def test_warning_uuid_no_key_can_have_is_a_404(api):
    # ':' cannot be in a KV key: the store answered 503 "unavailable" for it.
    for method in ("GET", "DELETE"):
        _error(api.request(method, "/1.0/warnings/a:b"), 404)
    _error(api.put("/1.0/warnings/a:b", json={"status": "acknowledged"}), 404)


# -- body size ----------------------------------------------------------------------------

def test_body_over_the_limit_is_a_413_without_being_read(api, stack):
    """50 MB is under the default 64 MiB, so this checks the 413 with a declared length
    above it: the gateway answers at once, before the body (never sent here) arrives."""
    head = (f"POST /1.0/instances HTTP/1.1\r\nHost: corral\r\n"
            f"Content-Type: application/json\r\nContent-Length: {DEFAULT_MAX_BODY + 1}\r\n"
            "\r\n").encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(stack.socket))
        s.sendall(head + b"{")
        reply = s.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "Request body too large" in reply


def test_chunked_body_over_the_limit_is_a_413(api):
    chunk = b" " * (1024 * 1024)

    def body():
        for _ in range(DEFAULT_MAX_BODY // len(chunk) + 2):
            yield chunk

    r = api.post("/1.0/profiles", content=body(), headers={"Content-Type": "application/json"})
    _error(r, 413, "Request body too large")


def test_fifty_megabyte_body_is_a_413_not_a_500(api):
    """The issue's 50 MB body, under the gateway's limit but not the bus's: decoded off the
    event loop, then refused as too large for a bus message (it was "nats: maximum payload
    exceeded", a 500)."""
    r = _post_raw(api, "/1.0/profiles", b'{"name": "' + b"a" * (50 * 1024 * 1024) + b'"}')
    _error(r, 413, "Request too large", "max_payload")


def test_file_push_above_the_limit_streams(api, uid):
    """File push is exempt from the limit (it streams to disk): a declared length above
    it is not refused for its size (the instance does not exist: 404)."""
    def body():
        for _ in range(DEFAULT_MAX_BODY // (1024 * 1024) + 2):
            yield b"\0" * (1024 * 1024)

    r = api.post(f"/1.0/instances/{uid}/files", params={"path": "/big"}, content=body())
    _error(r, 404)


# -- paths of the host --------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static")
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.c1 = w.create("c1", start=True)  # type: ignore[attr-defined]
        yield w


@pytest.mark.parametrize("path", [
    "/proc/self/mem", "/proc/self/fd/0", "/proc/self/root/etc/hostname", "/proc/1/root/x",
    "/proc/self/cwd/nothere", "/proc/kcore", "/sys/kernel/notes", "/dev/zero",
])
def test_file_pull_of_special_paths_is_a_4xx_without_host_paths(world, api, stack, path):
    r = api.get(f"/1.0/instances/{world.c1}/files", params={"path": path})
    if r.status_code == 200:
        return  # some (a plain file under /proc) are readable: fine, not an error
    message = _error(r, r.status_code)
    assert 400 <= r.status_code < 500, message
    # The container's root as the host sees it (/proc/<pid>/root, .../rootfs) or
    # $CORRAL_DIR never shows: /proc/self of the instance was '/proc/8385/root/proc/self'.
    assert str(stack.dir) not in message and "/rootfs" not in message, message
    assert not re.search(r"/proc/\d+/root", message.replace(path, "")), message
    assert path.split("/")[2] in message, message  # it names the instance's path


@pytest.mark.parametrize("method,path,extra", [
    ("post", "/proc/sysrq-trigger", {"content": b"h"}),  # would be the host's sysrq
    ("post", "/sys/class/net/lo/mtu", {"content": b"65536"}),  # harmless were it written
    ("post", "/sys/fs/cgroup/corral-test-x",
     {"content": b"", "headers": {"X-LXD-type": "directory"}}),
    ("get", "/proc/cpuinfo", {}),
    ("delete", "/proc/sysrq-trigger", {}),
])
def test_files_on_kernel_file_systems_are_refused(world, api, method, path, extra):
    """A running container's files are reached as the host's root: a write to its /proc or
    /sys would be the host's (sysrq, uevent helper, cgroups), so none is even opened."""
    r = getattr(api, method)(f"/1.0/instances/{world.c1}/files", params={"path": path},
                             **extra)
    message = _error(r, 400)
    assert "kernel file system" in message and path in message, message
