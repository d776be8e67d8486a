"""The gateway's instance lists are the services' JSON bytes framed, never re-encoded:
each member's reply (``codec.encode_json(Reply(metadata=RawJSON(...)))``, as the instance
service answers) joined into LXD's sync envelope, whatever number of items each has."""

from __future__ import annotations

import json

from services.gateway.routes.instances import _items, joined
from shared import codec
from shared.models import Reply


def _reply(items: list[dict]) -> bytes:
    raw = codec.RawJSON(json.dumps(items, separators=(",", ":")).encode())
    return codec.encode_json(Reply(metadata=raw))


def test_items_are_a_view_of_the_reply_without_brackets():
    assert bytes(_items(_reply([]))) == b""
    assert bytes(_items(_reply([{"name": "a"}]))) == b'{"name":"a"}'
    assert bytes(_items(_reply([{"name": "a"}, {"name": "b"}]))) == \
        b'{"name":"a"},{"name":"b"}'
    data = _reply([{"name": "a"}])
    assert isinstance(_items(data), memoryview)  # no copy of a 2 MB reply
    # a reply of another shape (msgpack-era metadata as JSON) is still read
    other = codec.encode_json(Reply(metadata=[{"name": "c"}]))
    assert json.loads(b"[" + bytes(_items(other)) + b"]") == [{"name": "c"}]


def test_joined_members_in_order_with_empty_ones():
    body = joined([_reply([{"name": "a"}]), _reply([]), _reply([{"name": "b"}, {"name": "c"}])])
    env = json.loads(body)
    assert (env["type"], env["status_code"], env["error_code"]) == ("sync", 200, 0)
    assert [i["name"] for i in env["metadata"]] == ["a", "b", "c"]
    assert json.loads(joined([_reply([]), _reply([])]))["metadata"] == []
    assert json.loads(joined([]))["metadata"] == []
