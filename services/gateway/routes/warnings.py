"""``/1.0/warnings``: read from the shared ``warnings`` bucket, as operations are.

Why the gateway reads the bucket itself: every service raises its own warnings there
(``shared/warnings.py``), so no one service could list them all; any gateway replica
answers. Status changes and deletes are compare-and-set writes, so a service counting a
new sighting at the same moment never loses the user's acknowledgement (or its count).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared import filters
from shared.errors import NotFound
from shared.events import Events
from shared.state import Store, mutate
from shared.warnings import BUCKET, check_status

from .. import responses
from ..request import read_json, recursion_of, requestor
from ..routing import Context

API_EXTENSIONS = ["warnings"]
_stores: dict[int, Store] = {}


async def _store(ctx: Context) -> Store:
    store = _stores.get(id(ctx.bus))
    if store is None:
        store = await Store(ctx.bus, BUCKET, history=1).open()
        _stores[id(ctx.bus)] = store
    return store


async def _one(ctx: Context, request: web.Request) -> tuple[Store, str, dict[str, Any]]:
    store = await _store(ctx)
    uuid = request.match_info["uuid"]
    found = await store.get(uuid) if len(uuid) <= 64 else None
    if found is None:
        raise NotFound("Warning not found")
    return store, uuid, found[0]


async def list_(ctx: Context, request: web.Request) -> web.Response:
    """All warnings, or a project's (``?project=``, LXD's filter), newest sighting last."""
    keep = filters.compile_filter(request.query.get("filter") or None)
    project = request.query.get("project")
    found = [w for w in (await (await _store(ctx)).items()).values()
             if (project is None or w.get("project") == project) and keep(w)]
    found.sort(key=lambda w: w.get("last_seen_at", ""))
    if recursion_of(request) == 0:
        return responses.sync([f"/1.0/warnings/{w['uuid']}" for w in found])
    return responses.sync(found)


async def get(ctx: Context, request: web.Request) -> web.Response:
    _store_, _uuid, warning = await _one(ctx, request)
    return responses.sync(warning)


async def put(ctx: Context, request: web.Request) -> web.Response:
    """Set the status: ``acknowledged`` (``lxc warning ack``) or ``new`` again."""
    store, uuid, before = await _one(ctx, request)
    status = check_status(await read_json(request))
    await mutate(store, uuid, lambda w: {**w, "status": status}, "Warning")
    if status != before.get("status"):
        action = "warning-acknowledged" if status == "acknowledged" else "warning-reset"
        await Events(ctx.bus).lifecycle(action, f"/1.0/warnings/{uuid}",
                                        requestor=requestor(request))
    return responses.sync(None)


async def delete(ctx: Context, request: web.Request) -> web.Response:
    store, uuid, _warning = await _one(ctx, request)
    await store.delete(uuid)
    await Events(ctx.bus).lifecycle("warning-deleted", f"/1.0/warnings/{uuid}",
                                    requestor=requestor(request))
    return responses.sync(None)
