"""Request messages of ``/1.0/instances`` (and LXD's ``/1.0/containers``) beyond the generic
ones: a GET with its recursion, and the state change with its checked fields."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from shared.errors import BadRequest
from shared.messages.instance import StatePutRequest
from shared.models import ObjectRequest

from ..request import json_object, name_of, project_of, recursion_of, requestor


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
