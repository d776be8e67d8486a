"""Request messages of ``/1.0/instances`` (and LXD's ``/1.0/containers``) beyond the generic
ones: a GET with its recursion, and the state change with its checked fields."""

from __future__ import annotations

import asyncio
import re
import time

import nats.errors
from aiohttp import web
from pydantic import ValidationError

from shared import cluster, codec, subjects
from shared.errors import BadRequest, CorralError, Unavailable
from shared.messages.instance import InstanceListRequest, StatePutRequest
from shared.models import ObjectRequest, Reply

from ..placement import Placement
from ..request import json_object, name_of, project_of, recursion_of, requestor
from ..routing import Context, listing, render


async def instance_get(request: web.Request) -> ObjectRequest:
    """``GET /1.0/instances/<name>``: ``recursion=1`` adds the state, as LXD."""
    return ObjectRequest(project=project_of(request), name=name_of(request),
                         body={"recursion": recursion_of(request)},
                         requestor=requestor(request))


async def named(request: web.Request) -> ObjectRequest:
    """A sub-resource of one instance (state, snapshots, backups): its name, no body."""
    return ObjectRequest(project=project_of(request), name=name_of(request),
                         requestor=requestor(request))


async def state_put(request: web.Request) -> StatePutRequest:
    """``PUT /1.0/instances/<name>/state``: start, stop, restart, freeze, unfreeze."""
    body = await json_object(request)
    try:
        return StatePutRequest(project=project_of(request), name=name_of(request),
                               requestor=requestor(request), **{
                                   k: v for k, v in body.items()
                                   if k in ("action", "timeout", "force", "stateful")})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadRequest(f"Invalid state change: {'.'.join(map(str, err['loc']))}: "
                         f"{err['msg']} (action is one of start, stop, restart, "
                         "freeze, unfreeze)") from None


# The instance service's JSON reply to a list, ``codec.encode_json(Reply(metadata=...))``,
# is LXD's sync envelope once its head and tail are swapped (see ``instance_list``).
_REPLY_HEAD = re.compile(rb'\{"v":\d+,"type":"sync","metadata":')
_REPLY_TAIL = b',"etag":null,"operation":null}'
_SYNC_HEAD = (b'{"type":"sync","status":"Success","status_code":200,"operation":"",'
              b'"error_code":0,"error":"","metadata":')


async def instance_list(ctx: Context, request: web.Request) -> web.StreamResponse:
    """``GET /1.0/instances``: the instance service answers in JSON and its metadata is
    passed through as bytes.

    Why: a list is the one large reply (1000 instances at recursion=1 are ~2 MB). Over
    msgpack the gateway decoded it and encoded it again as JSON, ~2/3 of the request's
    time; now the service encodes JSON once and the gateway only frames it. A reply of
    another shape (never expected) is decoded and rendered as before.
    """
    req = await listing(request)
    if ctx.config.cluster:
        return await cluster_list(ctx, req)
    data = await _ask_list(ctx, subjects.service("instance", "list"), req)
    head = _REPLY_HEAD.match(data)
    if head is not None and data.endswith(_REPLY_TAIL):
        # one copy of the (possibly 2 MB) metadata: a memoryview slice copies nothing
        body = b"".join((_SYNC_HEAD, memoryview(data)[head.end():len(data) - len(_REPLY_TAIL)],
                         b"}"))
        return web.Response(body=body, content_type="application/json")
    return render(Reply.model_validate(codec.decode_json(data) or {}))


async def _ask_list(ctx: Context, subject: str, req: object) -> bytes:
    """One instance service's list, as its JSON reply's bytes."""
    try:
        msg = await ctx.bus.request_raw(subject, codec.encode_json(req), service="instance",
                                        headers={codec.CONTENT_TYPE: codec.JSON})
    except nats.errors.MaxPayloadError:
        raise CorralError("The instance list is larger than the bus carries (NATS "
                          "max_payload); filter it or raise max_payload", 503) from None
    return msg.data


def _items(data: bytes) -> bytes | memoryview:
    """The JSON array of a list reply, without its brackets (empty when empty): a view
    of the reply's bytes, so the join of every member's is the one copy."""
    head = _REPLY_HEAD.match(data)
    start, end = (head.end(), len(data) - len(_REPLY_TAIL)) if head is not None else (0, 0)
    if head is not None and data.endswith(_REPLY_TAIL) and end - start >= 2 and \
            data[start] == ord("[") and data[end - 1] == ord("]"):
        return memoryview(data)[start + 1:end - 1]
    if head is not None and data.endswith(_REPLY_TAIL):
        array = data[start:end].strip()
    else:
        array = codec.encode_json(Reply.model_validate(codec.decode_json(data) or {}
                                                       ).metadata or [])
    return array[1:-1].strip()


async def cluster_list(ctx: Context, req: object) -> web.Response:
    """``GET /1.0/instances`` in a cluster: every member lists the instances located on
    it, all asked at once; a member that is offline or does not answer has its
    instances listed by this node with status Error (as LXD lists an offline member's),
    rather than the whole list failing."""
    if ctx.placement is None:
        ctx.placement = Placement(ctx.bus, ctx.config)
    now = time.time()
    members = await ctx.placement.members()
    nodes = {m.name: cluster.is_online(m, now) for m in members}
    nodes.setdefault(ctx.config.node, True)
    base = req.model_dump()  # type: ignore[attr-defined]

    async def one(node: str, online: bool) -> bytes:
        ask = InstanceListRequest(**base, target=node)
        if online:
            try:
                return await _ask_list(ctx, subjects.node(node, "instance", "list"), ask)
            except Unavailable:
                if node == ctx.config.node:
                    raise
        return await _ask_list(ctx, subjects.node(ctx.config.node, "instance", "list"), ask)

    parts = await asyncio.gather(*(one(n, up) for n, up in sorted(nodes.items())))
    return web.Response(body=joined(parts), content_type="application/json")


def joined(replies: list[bytes]) -> bytes:
    """LXD's sync envelope around the items of several list replies, in order: the one
    copy of each member's items (1000 instances over 3 nodes are ~2 MB)."""
    pieces: list[bytes | memoryview] = [_SYNC_HEAD, b"["]
    for items in map(_items, replies):
        if len(items):
            pieces += (items, b",")
    if len(pieces) == 2:  # no items at all
        pieces.append(b"]}")
    else:
        pieces[-1] = b"]}"  # in place of the last comma
    return b"".join(pieces)
