"""msgpack on the wire for requests and replies (compact, fast, binary-safe)."""

from __future__ import annotations

from typing import Any

import msgpack
from pydantic import BaseModel


def encode(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    return msgpack.packb(value, use_bin_type=True, datetime=False, default=_default)


def decode(data: bytes) -> Any:
    if not data:
        return None
    return msgpack.unpackb(data, raw=False)


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
