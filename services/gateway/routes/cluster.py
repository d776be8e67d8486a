"""``/1.0/cluster`` and ``/1.0/cluster/members``: LXD 5.0's shapes over the ``members`` bucket.

Every gateway reads the same replicated bucket, so ``lxc cluster list`` answers the same on
any node, and a member's status is judged from its heartbeat's age by whoever reads it
(``shared.cluster.status_of``): a node killed outright turns OFFLINE on the others
without having said goodbye. A standalone server answers ``enabled: false`` as LXD does.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import nats.errors
from aiohttp import web

from shared.cluster import Member, is_online, open_members, read_members, status_of
from shared.errors import (
    BadRequest,
    Conflict,
    CorralError,
    Forbidden,
    NotFound,
    Unavailable,
)
from shared.state import Store

from .. import responses
from ..evacuate import Evacuation, check_mode, edit_member
from ..placement import Placement
from ..request import json_object, recursion_of
from ..routing import Context

# What LXD 5.0 advertises for the parts of clustering served here (lxc checks them).
API_EXTENSIONS = ["clustering", "clustering_roles", "clustering_architecture",
                  "clustering_failure_domains", "clustering_description",
                  "clustering_sizing", "clustering_server_address", "clustering_join_token",
                  "clustering_edit_roles", "clustering_config", "clustering_evacuation"]

# LXD's cluster.join_token_expiry default (3H): a join token unused for this long expires.
JOIN_TOKEN_EXPIRY = 3 * 3600.0
JOIN_DESCRIPTION = "Requesting to join the cluster"  # LXD's, which `list-tokens` shows
NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")  # a host name

_stores: dict[int, Store] = {}


async def _store(ctx: Context) -> Store:
    store = _stores.get(id(ctx.bus))
    if store is None:
        store = _stores[id(ctx.bus)] = await open_members(ctx.bus)
    return store


# The last list read per gateway: served while the bucket cannot answer. When a node dies,
# each stream it led elects a new leader (~4-12 s) and reads time out meanwhile; the
# heartbeats in the last list still age, so a dead member still turns OFFLINE.
_last: dict[int, list[Member]] = {}
READ_TIMEOUT = 3.0


async def _members(ctx: Context) -> list[Member]:
    try:
        members = await asyncio.wait_for(read_members(await _store(ctx)), READ_TIMEOUT)
    except (nats.errors.Error, TimeoutError, CorralError) as exc:
        cached = _last.get(id(ctx.bus))
        if cached is None:
            raise Unavailable(f"The cluster members cannot be read now ({exc or 'timeout'}): "
                              "JetStream may be electing a leader after losing a node; "
                              "retry in a few seconds") from exc
        return cached
    _last[id(ctx.bus)] = members
    return members


def _require_cluster(ctx: Context) -> None:
    if not ctx.config.cluster:
        raise BadRequest("This server isn't part of a cluster (standalone: start the nodes "
                         "with `make cluster-up`, see docs/cluster.md)")


# Member config keys LXD 5.0 has (user.* aside) and the values each takes.
MEMBER_CONFIG = {"scheduler.instance": ("all", "manual", "group")}


def _edited(body: dict[str, Any], current: dict[str, Any], replace: bool) -> dict[str, Any]:
    """The record with the body's editable fields (PUT replaces ``config``; PATCH merges)."""
    new = dict(current)
    if "description" in body:
        if not isinstance(body["description"], str):
            raise BadRequest("Invalid description: expected a string")
        new["description"] = body["description"]
    if "failure_domain" in body:
        domain = body["failure_domain"] or "default"
        if not isinstance(domain, str) or not NAME_RE.match(domain):
            raise BadRequest(f"Invalid failure domain {str(domain)[:70]!r}: use a name of "
                             "letters, digits and '-'")
        new["failure_domain"] = domain
    if "config" in body or replace:
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise BadRequest("Invalid config: expected a mapping of keys to strings")
        merged = {} if replace else dict(current.get("config") or {})
        for key, value in config.items():
            value = "" if value is None else str(value)
            if not key.startswith("user.") and key not in MEMBER_CONFIG:
                raise BadRequest(f"Invalid member config key {key!r}: use "
                                 f"{', '.join(MEMBER_CONFIG)} or user.*")
            if key in MEMBER_CONFIG and value and value not in MEMBER_CONFIG[key]:
                raise BadRequest(f"Invalid value {value!r} for {key}: use one of "
                                 f"{', '.join(MEMBER_CONFIG[key])}")
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        new["config"] = merged
    if "groups" in body:
        groups = body["groups"] or ["default"]
        if not isinstance(groups, list) or not all(
                isinstance(g, str) and NAME_RE.match(g) for g in groups):
            raise BadRequest("Invalid groups: expected a list of group names")
        new["groups"] = list(dict.fromkeys(groups))
    return Member.model_validate(new).model_dump()


async def _member_edit(ctx: Context, request: web.Request, replace: bool) -> web.Response:
    _require_cluster(ctx)
    name = request.match_info["name"]
    body = await json_object(request)
    store = await _store(ctx)
    for _ in range(20):  # the member's own heartbeat writes the same key every few s
        found = await store.get(name)
        if found is None or found[0].get("removed"):
            raise NotFound("Cluster member not found")
        try:
            await store.update(name, _edited(body, found[0], replace), found[1])
            return responses.sync({})
        except Conflict:
            await asyncio.sleep(0.05)
    raise Conflict("The member's record kept changing; retry")


async def member_put(ctx: Context, request: web.Request) -> web.Response:
    """``PUT /1.0/cluster/members/<name>`` (``lxc cluster set/edit``): description,
    failure domain, config (``scheduler.instance``, ``user.*``) and groups, which the
    member's heartbeats keep and placement reads."""
    return await _member_edit(ctx, request, replace=True)


async def member_patch(ctx: Context, request: web.Request) -> web.Response:
    return await _member_edit(ctx, request, replace=False)


def render(member: Member) -> dict[str, object]:
    """One member in LXD 5.0's ``ClusterMember`` shape."""
    status, message = status_of(member)
    return {
        "server_name": member.name,
        "url": member.url,
        "database": member.database,
        "status": status,
        "message": message,
        "architecture": member.architecture,
        "failure_domain": member.failure_domain,
        "description": member.description,
        "roles": member.roles,
        "config": member.config,
        "groups": member.groups,
    }


async def cluster_get(ctx: Context, _request: web.Request) -> web.Response:
    """``GET /1.0/cluster``: this node's name, and whether clustering is on."""
    if not ctx.config.cluster:
        return responses.sync({"server_name": "", "enabled": False, "member_config": []})
    return responses.sync({"server_name": ctx.config.node, "enabled": True,
                           "member_config": []})


async def members_list(ctx: Context, request: web.Request) -> web.Response:
    """``GET /1.0/cluster/members``: URLs, or the members at recursion=1."""
    _require_cluster(ctx)
    members = await _members(ctx)
    if recursion_of(request) >= 1:
        return responses.sync([render(m) for m in members])
    return responses.sync([f"/1.0/cluster/members/{m.name}" for m in members])


async def member_get(ctx: Context, request: web.Request) -> web.Response:
    """``GET /1.0/cluster/members/<name>``."""
    _require_cluster(ctx)
    name = request.match_info["name"]
    for member in await _members(ctx):
        if member.name == name:
            return responses.sync(render(member))
    raise NotFound("Cluster member not found")


# -- joining and leaving --------------------------------------------------------------------

def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _expired(value: object) -> bool:
    if not isinstance(value, str):
        return False
    head = value.rstrip("Z").partition(".")[0]
    try:
        ts = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return ts.timestamp() < time.time()


async def _join_tokens(ctx: Context) -> list[dict[str, Any]]:
    """The running join-token operations (single use: a used one is cancelled)."""
    return [op for op in await ctx.ops.list(None)
            if op.get("class") == "token" and op.get("status") == "Running"
            and isinstance((op.get("metadata") or {}).get("serverName"), str)]


async def member_add(ctx: Context, request: web.Request) -> web.Response:
    """``POST /1.0/cluster/members`` (``lxc cluster add NAME``): a join token for NAME, as
    LXD's running operation of class ``token`` whose metadata the client turns into the
    token (base64 JSON: server_name, fingerprint, addresses, secret, expires_at)."""
    _require_cluster(ctx)
    body = await json_object(request)
    name = body.get("server_name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(f"Invalid member name {str(name)[:70]!r}: use a host name (letters, "
                         "digits and '-', at most 63 characters)")
    members = await _members(ctx)
    if any(m.name == name for m in members):
        raise Conflict(f"The cluster already has a member with name: {name}")
    if any(op["metadata"]["serverName"] == name for op in await _join_tokens(ctx)):
        raise Conflict(f"A cluster join token for server {name!r} already exists "
                       f"(`lxc cluster revoke-token {name}` first)")
    addresses = [urlparse(m.url).netloc for m in members if m.url and is_online(m)]
    meta = {"serverName": name, "secret": secrets.token_hex(32),
            "fingerprint": ctx.remote.server_fingerprint, "addresses": addresses,
            "expiresAt": _rfc3339(time.time() + JOIN_TOKEN_EXPIRY)}

    async def pending(_handle: Any) -> None:
        await asyncio.sleep(JOIN_TOKEN_EXPIRY)
        raise CorralError("Token has expired", 403)

    op = await ctx.ops.start(JOIN_DESCRIPTION, pending, cls="token", may_cancel=True,
                             metadata=meta)
    return responses.async_(op.lxd())


async def member_accept(ctx: Context, request: web.Request) -> web.Response:
    """``POST /internal/cluster/accept`` ``{"name", "secret"}``: a joining node redeems its
    token (once: the operation is cancelled). deploy/cluster-join.sh calls it before it
    starts the node; a member removed before may come back this way."""
    _require_cluster(ctx)
    body = await json_object(request)
    name, secret = body.get("name"), body.get("secret")
    if not isinstance(name, str) or not isinstance(secret, str) or not secret:
        raise BadRequest("A join needs the member's name and the token's secret")
    for op in await _join_tokens(ctx):
        md = op["metadata"]
        if md["serverName"] != name or not isinstance(md.get("secret"), str) or \
                not hmac.compare_digest(md["secret"].encode(), secret.encode()):
            continue
        try:
            await ctx.ops.cancel(op["id"])
        except CorralError:  # used a moment ago by someone else
            break
        if _expired(md.get("expiresAt")):
            raise Forbidden("Token has expired")
        await (await _store(ctx)).delete(name)  # a removed member's tombstone, if any
        return responses.sync({"server_name": name})
    raise Forbidden("No matching cluster join operation found")


async def member_remove(ctx: Context, request: web.Request) -> web.Response:
    """``DELETE /1.0/cluster/members/<name>`` (``lxc cluster remove``): forget an OFFLINE
    member. Its record becomes a tombstone its gateway honours if the node comes back (it
    stops heartbeating until it joins again with a token). A member that is still online
    is refused unless ``force=1`` (``--force``): its gateway then sees the tombstone at
    its next heartbeat and stops counting itself a member."""
    _require_cluster(ctx)
    name = request.match_info["name"]
    member = next((m for m in await _members(ctx) if m.name == name), None)
    if member is None:
        raise NotFound("Cluster member not found")
    if is_online(member) and request.query.get("force") not in ("1", "true"):
        raise BadRequest(f"Member {name} is online: stop its processes first (`make "
                         f"cluster-kill NODE={name.removeprefix('node')}` here, or its "
                         "units on a real host), then remove it once it shows OFFLINE")
    await (await _store(ctx)).put(name, {**member.model_dump(), "removed": True,
                                         "removed_at": time.time()})
    return responses.sync({})


# -- evacuate and restore (services/gateway/evacuate.py) -----------------------------------

async def member_state(ctx: Context, request: web.Request) -> web.Response:
    """``POST /1.0/cluster/members/<name>/state`` ``{"action": "evacuate"|"restore",
    "mode"}`` (``lxc cluster evacuate/restore``): an operation. The member's state is set
    before the operation starts (LXD sets it first thing in it), so a launch right after
    the answer already goes elsewhere and a second evacuate is refused at once."""
    _require_cluster(ctx)
    name = request.match_info["name"]
    body = await json_object(request)
    action = body.get("action")
    if action not in ("evacuate", "restore"):
        raise BadRequest(f"Unknown action {str(action)[:40]!r}: use evacuate or restore")
    mode = check_mode(body.get("mode"))
    members = await _store(ctx)
    if ctx.placement is None:
        ctx.placement = Placement(ctx.bus, ctx.config)
    instances, _ = await ctx.placement._open()
    evacuation = Evacuation(ctx.bus, ctx.ops, members, instances, name)
    before: dict[str, Any] = {}

    def mark(record: dict[str, Any]) -> dict[str, Any]:
        before.clear()
        before.update(record)
        if action == "evacuate" and record.get("evacuated"):
            raise BadRequest("Cluster member is already evacuated")
        if action == "restore" and not record.get("evacuated"):
            raise BadRequest("Cluster member is already restored")
        if action == "evacuate":
            return {**record, "evacuated": True, "evacuated_instances": []}
        return {**record, "evacuated": False}

    await edit_member(members, name, mark)
    resources = {"cluster_members": [f"/1.0/cluster/members/{name}"]}
    try:
        if action == "evacuate":
            async def run(handle: Any) -> dict[str, Any]:
                return await evacuation.evacuate(handle, mode)

            op = await ctx.ops.start("Evacuating cluster member", run, resources=resources)
        else:
            remembered = list(before.get("evacuated_instances") or [])

            async def run(handle: Any) -> dict[str, Any]:
                try:
                    return await evacuation.restore(handle, remembered)
                finally:
                    await edit_member(members, name,
                                      lambda m: {**m, "evacuated_instances": []})

            op = await ctx.ops.start("Restoring cluster member", run, resources=resources)
    except BaseException:  # no operation: the state goes back as it was
        await edit_member(members, name, lambda m: {
            **m, "evacuated": before.get("evacuated", False),
            "evacuated_instances": before.get("evacuated_instances") or []})
        raise
    return responses.async_(op.lxd())
