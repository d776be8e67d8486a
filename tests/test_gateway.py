"""The gateway speaks LXD's REST API: envelope, errors, lists, profiles CRUD."""

from __future__ import annotations

import json
from pathlib import Path

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lxd-5.0"
ENVELOPE_KEYS = {"type", "status", "status_code", "operation", "error_code", "error",
                 "metadata"}


def test_root_lists_api_versions(api):
    r = api.get("/")
    assert r.status_code == 200
    assert r.json()["metadata"] == ["/1.0"]


def test_server_info_has_lxd_shape(api):
    r = api.get("/1.0")
    body = r.json()
    assert r.status_code == 200 and set(body) == ENVELOPE_KEYS
    meta = body["metadata"]
    assert meta["api_version"] == "1.0"
    assert meta["auth"] == "trusted"
    assert "instances" in meta["api_extensions"]
    # Services add their parts: the storage service its extension and drivers.
    assert "storage" in meta["api_extensions"]
    assert {"Name": "dir", "Version": "1", "Remote": False} in \
        meta["environment"]["storage_supported_drivers"]
    env = meta["environment"]
    for field in ("server_name", "server_pid", "server_version", "kernel", "kernel_version",
                  "driver", "storage", "architectures"):
        assert field in env, field
    # What confines containers, detected: seccomp alone where AppArmor is missing.
    apparmor = Path("/sys/module/apparmor/parameters/enabled")
    on = apparmor.exists() and apparmor.read_text().strip() == "Y"
    assert env["confinement"] == ("apparmor, seccomp" if on else "seccomp (no AppArmor here)")
    if (REF / "get_1.0.json").exists():  # the same top-level keys as LXD 5.0
        lxd = json.loads((REF / "get_1.0.json").read_text())["metadata"]
        assert set(lxd) <= set(meta)


def test_list_endpoints_answer_with_lists(api):
    for path in ("/1.0/instances", "/1.0/images", "/1.0/storage-pools", "/1.0/networks",
                 "/1.0/profiles"):
        for recursion in (0, 1):
            r = api.get(path, params={"recursion": recursion})
            assert r.status_code == 200, (path, r.text)
            assert r.json()["type"] == "sync"
            assert isinstance(r.json()["metadata"], list), path


def test_unknown_path_is_lxd_404(api):
    r = api.get("/1.0/nothing-here")
    assert r.status_code == 404
    assert r.json() == {"type": "error", "status": "", "status_code": 0, "operation": "",
                        "error_code": 404, "error": "not found", "metadata": None}


def test_bad_recursion_is_400(api):
    r = api.get("/1.0/instances", params={"recursion": "lots"})
    assert r.status_code == 400
    assert "recursion" in r.json()["error"]


def test_malformed_json_is_400_and_creates_nothing(api, uid):
    r = api.post("/1.0/profiles", content=b'{"name": "' + uid.encode() + b'", ')
    assert r.status_code == 400
    assert r.json()["error_code"] == 400
    assert "Invalid JSON" in r.json()["error"]
    assert api.get(f"/1.0/profiles/{uid}").status_code == 404


def test_profile_crud_with_etag(api, uid):
    r = api.post("/1.0/profiles", json={"name": uid, "config": {"limits.cpu": "1"},
                                        "description": "test"})
    assert r.status_code == 200, r.text
    assert api.post("/1.0/profiles", json={"name": uid}).status_code == 409
    r = api.get(f"/1.0/profiles/{uid}")
    etag = r.headers["ETag"]
    assert r.json()["metadata"]["config"] == {"limits.cpu": "1"}
    assert f"/1.0/profiles/{uid}" in api.get("/1.0/profiles").json()["metadata"]

    r = api.patch(f"/1.0/profiles/{uid}", json={"config": {"limits.memory": "64MiB"}},
                  headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    # The old ETag no longer matches: LXD answers 412 and changes nothing.
    r = api.put(f"/1.0/profiles/{uid}", json={"config": {}}, headers={"If-Match": etag})
    assert r.status_code == 412
    meta = api.get(f"/1.0/profiles/{uid}").json()["metadata"]
    assert meta["config"] == {"limits.cpu": "1", "limits.memory": "64MiB"}

    r = api.post(f"/1.0/profiles/{uid}", json={"name": uid + "b"})
    assert r.status_code == 200
    assert api.get(f"/1.0/profiles/{uid}").status_code == 404
    assert api.delete(f"/1.0/profiles/{uid}b").status_code == 200
    assert api.get(f"/1.0/profiles/{uid}b").json()["error"] == "Profile not found"


def test_invalid_profile_bodies_are_400(api, uid):
    for body in ({"name": "a/b"}, {"name": ""}, {"name": uid, "config": {"x": [1]}},
                 {"name": uid, "devices": {"eth0": {"nictype": "bridged"}}}, ["list"]):
        r = api.post("/1.0/profiles", json=body)
        assert r.status_code == 400, (body, r.text)
    assert api.get(f"/1.0/profiles/{uid}").status_code == 404
