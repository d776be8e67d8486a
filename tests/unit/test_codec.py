"""The wire format of a request: msgpack by default, JSON by header or by its first byte."""

from __future__ import annotations

import json

from shared import codec
from shared.models import Reply


def test_content_type_header_wins_then_the_body_is_sniffed():
    body = json.dumps({"project": "default"}).encode()
    assert codec.content_type({"Content-Type": "application/json"}, b"") == codec.JSON
    assert codec.content_type({"Content-Type": "application/json; charset=utf-8"},
                              b"") == codec.JSON
    assert codec.content_type({"Content-Type": "application/msgpack"}, body) == codec.MSGPACK
    assert codec.content_type(None, body) == codec.JSON  # what `nats req` sends
    assert codec.content_type({}, b'  \n{"a": 1}') == codec.JSON
    packed = codec.encode({"project": "default"})
    assert codec.content_type(None, packed) == codec.MSGPACK  # a msgpack map is not '{'
    assert codec.content_type(None, b"") == codec.MSGPACK


def test_json_round_trip_of_a_reply_with_bytes_and_sets():
    reply = Reply(metadata={"data": b"\x00\xff", "tags": {"a"}})
    out = json.loads(codec.encode_as(codec.JSON, reply))
    assert out["type"] == "sync" and out["metadata"] == {"data": "AP8=", "tags": ["a"]}
    assert codec.decode_as(codec.JSON, b" ") is None
    assert codec.decode_as(codec.MSGPACK, codec.encode({"x": 1})) == {"x": 1}


def test_a_model_encodes_as_its_dump_nested_models_included():
    from shared.models import ListRequest, Reply

    inner = ListRequest(project="p", recursion=2)
    reply = Reply(metadata=[{"name": "a", "inner": inner}], etag="e")
    assert codec.decode(codec.encode(reply)) == {
        **reply.model_dump(mode="python"),
        "metadata": [{"name": "a", "inner": inner.model_dump(mode="python")}]}


def test_a_model_encodes_as_json_as_its_dump_nested_models_included():
    from shared.models import ListRequest, Reply

    inner = ListRequest(project="p", recursion=2)
    reply = Reply(metadata=[{"name": "a", "inner": inner}])
    assert json.loads(codec.encode_json(reply)) == {
        **reply.model_dump(mode="json"),
        "metadata": [{"name": "a", "inner": inner.model_dump(mode="json")}]}
    # the gateway's instance list frames this reply by its head and tail
    assert codec.encode_json(Reply(metadata=[1])) == (
        b'{"v":1,"type":"sync","metadata":[1],"etag":null,"operation":null}')


def test_raw_json_metadata_is_spliced_into_json_and_decoded_for_msgpack():
    items = [{"name": "a", "config": {"k": "v"}}, {"name": "b", "status": "Stopped"}]
    raw = codec.RawJSON(codec.encode_json(items))
    reply = Reply(metadata=raw)
    assert codec.encode_json(reply) == codec.encode_json(Reply(metadata=items))
    assert codec.decode(codec.encode(reply))["metadata"] == items
    assert json.loads(codec.encode_json({"metadata": raw, "etag": "x"})) == {
        "metadata": items, "etag": "x"}
    assert codec.encode_json(Reply(metadata=codec.RawJSON(b"[]"))) == codec.encode_json(
        Reply(metadata=[]))


def test_raw_json_in_pieces_is_joined_once_into_the_reply():
    """The instance list hands its cached objects as pieces (no join of its own)."""
    items = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    pieces = [b"[", codec.encode_json(items[0]), b",", codec.encode_json(items[1]), b",",
              codec.encode_json(items[2]), b"]"]
    reply = Reply(metadata=codec.RawJSON(pieces))
    assert codec.encode_json(reply) == codec.encode_json(Reply(metadata=items))
    assert codec.decode(codec.encode(reply))["metadata"] == items
