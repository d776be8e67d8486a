"""Requests and replies on the wire: msgpack between services, JSON for everyone else.

msgpack is the default (compact, fast, binary-safe). A request whose ``Content-Type``
header says ``application/json`` (or that has no such header and whose body is a JSON
object: a request is always a map, and a msgpack map never starts with ``{``) is read as
JSON and answered in JSON, so ``nats req corral.instance.list '{"project":"default"}'``
works from the NATS CLI or any language. Bytes in a JSON reply travel as base64 strings.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

import msgpack
from pydantic import BaseModel

CONTENT_TYPE = "Content-Type"
MSGPACK = "application/msgpack"
JSON = "application/json"


class RawJSON:
    """A reply's ``metadata`` already encoded as JSON (the instance list's per-instance
    cache): spliced as is into a JSON reply, decoded once for a msgpack one. A wrapper,
    not a bytes subclass: making one of those copies the bytes (~2 MB for a big list).
    ``data`` may be the JSON's pieces in order, joined only into the reply itself (one
    copy of a big list instead of two)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | list[bytes]) -> None:
        self.data = data

    def pieces(self) -> list[bytes]:
        return self.data if isinstance(self.data, list) else [self.data]


_RAW_MARK = "\x00corral-raw-json\x00"  # no JSON value a service sends contains NUL
_RAW_MARK_JSON = json.dumps(_RAW_MARK).encode()


def _raw_metadata(value: Any) -> RawJSON | None:
    if isinstance(value, dict) and isinstance(value.get("metadata"), RawJSON):
        return value["metadata"]
    return None


def encode(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        # Shallow: msgpack walks the values itself (nested models through _default).
        # model_dump first copied the whole tree: ~30 ms of a 1000-instance list reply.
        value = dict(value)
    raw = _raw_metadata(value)
    if raw is not None:
        value = {**value, "metadata": json.loads(b"".join(raw.pieces()))}
    return msgpack.packb(value, use_bin_type=True, datetime=False, default=_default)


def decode(data: bytes) -> Any:
    if not data:
        return None
    return msgpack.unpackb(data, raw=False)


def encode_json(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        value = dict(value)  # shallow, as encode(): nested models through the default hook
    raw = _raw_metadata(value)
    if raw is not None:
        value = {**value, "metadata": _RAW_MARK}
    out = json.dumps(value, separators=(",", ":"), default=_json_default).encode()
    if raw is not None:
        head, tail = out.split(_RAW_MARK_JSON, 1)
        out = b"".join((head, *raw.pieces(), tail))
    return out


def decode_json(data: bytes) -> Any:
    if not data or not data.strip():
        return None
    return json.loads(data)


def content_type(headers: Mapping[str, str] | None, data: bytes) -> str:
    """The format of a request: its ``Content-Type`` header, else JSON when it looks so."""
    value = (headers or {}).get(CONTENT_TYPE)
    if value:
        return JSON if value.split(";")[0].strip().lower() == JSON else MSGPACK
    return JSON if data.lstrip()[:1] == b"{" else MSGPACK


def decode_as(kind: str, data: bytes) -> Any:
    return decode_json(data) if kind == JSON else decode(data)


def encode_as(kind: str, value: Any) -> bytes:
    return encode_json(value) if kind == JSON else encode(value)


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    return _default(obj)
