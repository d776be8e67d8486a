"""Requests for exec, files, console and logs of an instance (gateway -> instance service).

Why bodies travel two ways: a bus message is limited (1 MiB by default), so file contents
and logs above :data:`INLINE_MAX` go through the ``transfers`` object store and only the
object's name (``blob``) is in the message. Whoever puts a blob there names it; whoever
reads it deletes it.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field

from shared.models import Request

# Bytes carried inside a bus message; larger payloads go through the transfers store.
INLINE_MAX = 256 * 1024


class ExecRequest(Request):
    """``POST /1.0/instances/<name>/exec``: ``body`` is LXD's InstanceExecPost as sent."""

    name: str
    body: dict[str, Any] = Field(default_factory=dict)


class FileRequest(Request):
    """``GET|POST|DELETE /1.0/instances/<name>/files?path=``.

    For a push: ``uid``/``gid``/``mode`` are -1 when the client sent no header (they
    apply to a new file; to an existing one only as ``modify_perm``, LXD's
    ``X-LXD-modify-perm``, names them); the content is ``data`` or the transfers object
    ``blob``. A get replies metadata
    ``{"type", "uid", "gid", "mode"}`` plus ``entries`` (directory), or ``data``/``blob``.
    """

    name: str
    path: str
    uid: int = -1
    gid: int = -1
    mode: int = -1
    type: str = "file"
    write: str = "overwrite"
    modify_perm: list[str] = Field(default_factory=list)
    data: bytes | None = None
    blob: str | None = None


class LogRequest(Request):
    """``/1.0/instances/<name>/console`` (``file`` None) and ``/logs[/<file>]``.

    A read replies metadata ``{"data": bytes}`` or ``{"blob": name}``; the log listing
    replies the URLs as LXD does.
    """

    name: str
    file: str | None = None


async def pack(bus: Any, data: bytes, kind: str) -> dict[str, Any]:
    """``{"data": bytes}`` when small, else put in the transfers store: ``{"blob": name}``."""
    if len(data) <= INLINE_MAX:
        return {"data": data}
    from shared import blobs

    name = f"{kind}-{uuid.uuid4().hex}"
    await blobs.put_bytes(await blobs.transfers(bus), name, data)
    return {"blob": name}


async def unpack(bus: Any, data: bytes | None, blob: str | None) -> bytes:
    """The bytes :func:`pack` made; a blob is deleted once read (it was a one-way trip)."""
    if not blob:
        return data or b""
    from shared import blobs

    store = await blobs.transfers(bus)
    try:
        return await blobs.get_bytes(store, blob)
    finally:
        await blobs.delete(store, blob)
