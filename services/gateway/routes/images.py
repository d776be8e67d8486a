"""``/1.0/images``: uploads, exports, image CRUD and ``/1.0/images/aliases``.

Uploads are what ``lxc image import`` sends: a raw tarball (unified) or a multipart form
(split: ``metadata`` + ``rootfs``/``rootfs.img``), with ``X-LXD-*`` headers. The body is
streamed to a temp file under ``$CORRAL_DIR/tmp``, put in the ``transfers`` object store and
handed to the image service's ``import`` (which then owns the objects). Exports stream the
image's objects back as LXD does: one file inline, or a multipart answer for split images.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs, parse_qsl

from aiohttp import BodyPartReader, web

from shared import blobs
from shared.errors import BadRequest
from shared.messages.image import ExportRequest, ImportRequest
from shared.models import ObjectRequest

from ..limits import streams_body
from ..request import etag_of, json_object, name_of, project_of, requestor
from ..routing import Context, creation, render

if TYPE_CHECKING:
    from nats.js.object_store import ObjectStore

_CHUNK = 1024 * 1024
_TRUE = ("1", "true", "yes", "on")


async def _save_stream(read: Callable[[], Awaitable[bytes]], path: Path) -> None:
    with open(path, "wb") as f:
        while chunk := await read():
            await asyncio.to_thread(f.write, chunk)


async def _save_upload(request: web.Request, tmp: Path) -> dict[str, Any]:
    """Write the body to files in ``tmp``; return the import fields the body decides."""
    if request.content_type != "multipart/form-data":
        await _save_stream(lambda: request.content.read(_CHUNK), tmp / "meta")
        return {"filename": request.headers.get("X-LXD-filename", "")}
    try:
        return await _save_multipart(request, tmp)
    except ValueError as exc:  # aiohttp's word for a form it cannot parse (no boundary...)
        raise BadRequest(f"Invalid multipart image: {exc}") from None


async def _save_multipart(request: web.Request, tmp: Path) -> dict[str, Any]:
    reader = await request.multipart()
    meta = await reader.next()
    if not isinstance(meta, BodyPartReader) or meta.name != "metadata":
        raise BadRequest("Invalid multipart image: the first part must be 'metadata'")
    await _save_stream(lambda: meta.read_chunk(_CHUNK), tmp / "meta")
    rootfs = await reader.next()
    if not isinstance(rootfs, BodyPartReader) or rootfs.name not in ("rootfs", "rootfs.img"):
        raise BadRequest("Invalid multipart image: the second part must be 'rootfs' or "
                         "'rootfs.img'")
    await _save_stream(lambda: rootfs.read_chunk(_CHUNK), tmp / "rootfs")
    return {"filename": rootfs.filename or "", "rootfs_part": rootfs.name}


def _headers(request: web.Request) -> dict[str, Any]:
    props: dict[str, str] = {}
    for raw in request.headers.getall("X-LXD-properties", []):
        props.update(parse_qsl(raw, keep_blank_values=True))
    profiles = parse_qs(request.headers.get("X-LXD-profiles", "")).get("profile")
    return {"public": request.headers.get("X-LXD-public", "").lower() in _TRUE,
            "properties": props, "profiles": profiles,
            "fingerprint": request.headers.get("X-LXD-fingerprint") or None}


async def stream_object(store: "ObjectStore", name: str,
                        write: Callable[[bytes], Awaitable[None]]) -> None:
    """Copy an object to ``write`` chunk by chunk, never holding it all in memory.

    nats-py hands chunks to a blocking ``write`` in a worker thread and waits for it, so a
    bounded queue gives backpressure; if the client goes away the thread is released.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
    aborted = threading.Event()

    class Sink:
        def write(self, data: bytes) -> int:
            fut = asyncio.run_coroutine_threadsafe(queue.put(bytes(data)), loop)
            while True:
                if aborted.is_set():
                    fut.cancel()
                    raise OSError("export aborted by the client")
                try:
                    fut.result(timeout=0.5)
                    return len(data)
                except concurrent.futures.TimeoutError:
                    continue

    async def produce() -> None:
        try:
            await store.get(name, writeinto=Sink())  # type: ignore[arg-type]
        finally:
            await queue.put(None)

    task = asyncio.create_task(produce())
    try:
        while (chunk := await queue.get()) is not None:
            await write(chunk)
        await task
    except BaseException:
        aborted.set()
        task.cancel()
        raise


@streams_body
async def create(ctx: Context, request: web.Request) -> web.Response:
    """``POST /1.0/images``: JSON is image.create (a source to copy from); a tarball or a
    multipart form is an upload, staged in the transfers store and handed to image.import."""
    if request.content_type == "application/json":
        return render(await ctx.ask("image", "create", await creation(request)))
    tmp_root = ctx.config.dir / "tmp"
    tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
    transfers = await blobs.transfers(ctx.bus)
    owned: list[str] = []
    try:
        fields = {**_headers(request), **await _save_upload(request, tmp)}
        base = f"upload-{uuid.uuid4().hex}"
        for part in ("meta", "rootfs"):
            if (tmp / part).exists():
                await blobs.put_file(transfers, f"{base}.{part}", tmp / part)
                owned.append(f"{base}.{part}")
                fields[part] = f"{base}.{part}"
        req = ImportRequest(project=project_of(request), requestor=requestor(request),
                            **fields)
        reply = await ctx.ask("image", "import", req)
        owned = []  # the image service deletes them when the import ends
        return render(reply)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for name in owned:
            await blobs.delete(transfers, name)


async def export(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``GET /1.0/images/<fp>/export``: image.export names the objects; we stream them."""
    info = (await ctx.ask("image", "export", ExportRequest(
        project=project_of(request), fingerprint=name_of(request)))).metadata
    store = await blobs.bucket(ctx.bus, info["bucket"])
    files = info["files"]
    if len(files) == 1:
        size = (await store.get_info(files[0]["object"])).size or 0
        resp = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline;filename={files[0]['filename']}"})
        resp.content_length = size
        await resp.prepare(request)
        await stream_object(store, files[0]["object"], resp.write)
        await resp.write_eof()
        return resp
    boundary = uuid.uuid4().hex
    resp = web.StreamResponse(headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for f in files:
        await resp.write((f"--{boundary}\r\nContent-Disposition: form-data; "
                          f"name=\"{f['part']}\"; filename=\"{f['filename']}\"\r\n"
                          "Content-Type: application/octet-stream\r\n\r\n").encode())
        await stream_object(store, f["object"], resp.write)
        await resp.write(b"\r\n")
    await resp.write(f"--{boundary}--\r\n".encode())
    await resp.write_eof()
    return resp


async def image_item(request: web.Request) -> ObjectRequest:
    """One image by fingerprint (prefix); PUT and PATCH carry a JSON object (no rename)."""
    body = await json_object(request) if request.method in ("PUT", "PATCH") else None
    return ObjectRequest(project=project_of(request), name=name_of(request), body=body,
                         etag=etag_of(request), requestor=requestor(request))
