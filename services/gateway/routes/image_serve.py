"""Serving images to other servers: ``POST /1.0/images/<fp>/secret`` and the
simplestreams tree of the public images (``/streams/v1/index.json``,
``/streams/v1/images.json`` and the files they name, ``/images/<fp>/<file>``), on the HTTPS
listener and the unix socket.

Rows of the gateway's route table, before IMAGES' rows. The tree's documents and file
locations come from the image service (``image.streams``); the bytes stream from the
``images`` object store as ``GET /1.0/images/<fp>/export`` streams them. The tree's paths
need no certificate (``trust.UNTRUSTED``): any LXD or Incus reads them as it reads
images.linuxcontainers.org, and only public images are in it.
"""

from __future__ import annotations

import json

from aiohttp import web

from shared import blobs
from shared.messages.image import SecretRequest, StreamsRequest

from ..request import name_of, project_of, requestor
from ..routing import Context, Route, ask
from .images import stream_object

TREE_FILE = "/images/{fingerprint}/{file}"


async def _secret(request: web.Request) -> SecretRequest:
    return SecretRequest(project=project_of(request), fingerprint=name_of(request),
                         requestor=requestor(request))


async def stream_document(ctx: Context, request: web.Request) -> web.Response:
    """``index.json`` / ``images.json``: plain JSON (no LXD envelope), as any image server."""
    name = request.path.lstrip("/")
    doc = (await ctx.ask("image", "streams", StreamsRequest(file=name))).metadata
    return web.Response(body=json.dumps(doc, indent=1).encode(),
                        content_type="application/json")


async def stream_file(ctx: Context, request: web.Request) -> web.StreamResponse:
    """One item of the tree, streamed from the object store with its length (LXD's client
    checks size and sha256 of what it downloads)."""
    path = f"images/{request.match_info['fingerprint']}/{request.match_info['file']}"
    where = (await ctx.ask("image", "streams", StreamsRequest(file=path))).metadata
    store = await blobs.bucket(ctx.bus, where["bucket"])
    resp = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"inline;filename={where['filename']}"})
    resp.content_length = int(where["size"])
    await resp.prepare(request)
    if request.method != "HEAD":
        await stream_object(store, where["object"], resp.write)
    await resp.write_eof()
    return resp


ROUTES: list[Route] = [
    Route("POST", "/1.0/images/{name}/secret", ask("image", "secret", _secret)),
    Route("GET", "/streams/v1/index.json", stream_document),
    Route("GET", "/streams/v1/images.json", stream_document),
    Route("GET", TREE_FILE, stream_file),
]
