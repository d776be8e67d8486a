"""Unit tests of shared pure logic: codec, subjects, keys, validation, config."""

from __future__ import annotations

import pytest

from shared import codec, subjects
from shared.api import check_etag, devices_map, etag, string_map, validate_object_name
from shared.config import load_config
from shared.errors import BadRequest, CorralError, NotFound, PreconditionFailed
from shared.models import ListRequest, Operation, Reply
from shared.operations import is_expired, parse_lxd_time
from shared.state import key


def test_codec_round_trips_models_and_bytes():
    req = ListRequest(project="p", recursion=2)
    assert ListRequest.model_validate(codec.decode(codec.encode(req))) == req
    assert codec.decode(codec.encode({"b": b"\x00\xff"})) == {"b": b"\x00\xff"}


def test_models_ignore_unknown_fields_from_newer_peers():
    reply = Reply.model_validate({"v": 2, "type": "sync", "metadata": [1], "future": "x"})
    assert reply.metadata == [1] and reply.v == 2


def test_operation_serialises_with_lxd_class_field():
    op = Operation(id="x", description="d")
    assert op.lxd()["class"] == "task" and "class_" not in op.lxd()


def test_subject_tokens_are_safe():
    assert subjects.event("lifecycle", "my.proj", "instance") == \
        "corral.events.lifecycle.my_proj.instance"
    assert subjects.node("n1", "instance", "start") == "corral.node.n1.instance.start"


def test_kv_keys_are_valid_and_unique():
    assert key("default", "c1") == "default.c1"
    odd = key("default", "a.b")
    assert odd != key("default", "a_b") and "." not in odd.split(".", 1)[1]
    assert key("default", "ünï") != key("default", "uni")


def test_errors_rebuild_from_codes():
    err = CorralError.from_code(404, "Instance not found")
    assert isinstance(err, NotFound) and err.code == 404
    assert CorralError.from_code(418, "teapot").code == 418


@pytest.mark.parametrize("name", ["", "a/b", "..", "a b", "x" * 65, None, 3])
def test_invalid_names(name):
    with pytest.raises(BadRequest):
        validate_object_name("profile", name)


def test_config_maps_are_strings():
    assert string_map("config", {"a": True, "b": 3}) == {"a": "true", "b": "3"}
    with pytest.raises(BadRequest):
        string_map("config", {"a": {"nested": 1}})
    with pytest.raises(BadRequest):
        devices_map({"eth0": {"network": "x"}})


def test_an_empty_device_value_is_no_value():
    """`lxc config device unset c eth0 limits.egress` sends the key with ""."""
    assert devices_map({"eth0": {"type": "nic", "network": "n", "limits.egress": ""}}) == \
        {"eth0": {"type": "nic", "network": "n"}}


def test_etag_mismatch_is_412():
    tag = etag("a", {"k": "v"})
    check_etag(None, tag)
    check_etag(f'"{tag}"', tag)
    with pytest.raises(PreconditionFailed):
        check_etag("other", tag)


def test_lxd_time_parsing_and_expiry():
    t = parse_lxd_time("2026-11-28T05:54:48.616004821Z")
    assert abs(t - 1795845288.616) < 0.01
    op = {"status": "Success", "updated_at": "2026-11-28T05:54:48.616004821Z"}
    assert is_expired(op, 600, now=t + 601) and not is_expired(op, 600, now=t + 599)
    assert not is_expired({**op, "status": "Running"}, 600, now=t + 10_000)


def test_config_env_overrides_file(tmp_path, monkeypatch):
    (tmp_path / "corral.yaml").write_text("request_timeout: 7\nnode: fromfile\n")
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    monkeypatch.setenv("CORRAL_NODE", "fromenv")
    cfg = load_config()
    assert cfg.request_timeout == 7 and cfg.node == "fromenv"
    assert cfg.socket_path == tmp_path / "unix.socket"
