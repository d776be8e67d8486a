"""Creating an instance: fast checks answered at once, then the slow part as an operation.

Why two halves: LXD answers an invalid name, a duplicate or an unknown image/profile with
an error envelope, not a failed operation; only the volume copy and the driver work run in
the background. The KV record is reserved (status "Creating") before the operation starts
so a duplicate is a 409 even when two creates race; any failure afterwards undoes every
step in reverse, and a crash mid-way is cleaned up by :mod:`reconcile`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from shared import faults
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages.network import Nic
from shared.state import key, mutate

from . import disks, image_pull, image_templates, project_checks, reconcile, records, validate
from .context import Context
from .drivers.base import InstanceSpec
from .drivers.router import CONTAINER, TYPES, type_of
from .names import host_name, random_name
from .records import expand, nic_names

Undo = Callable[[], Awaitable[Any]]


async def expand_profiles(ctx: Context, project: str, names: list[str]
                          ) -> list[dict[str, Any]]:
    """The profiles ``names`` of ``project``'s effective project for profiles (its own
    with ``features.profiles``, else ``default``'s, as LXD)."""
    out = []
    project = project_checks.effective(ctx, project, "profiles")
    for name in names:
        found = await ctx.profiles.store.get(key(project, name))
        if found is None:
            raise NotFound(f"Profile {name!r} not found")
        out.append(found[0])
    return out


def pick_name(ctx: Context, body: dict[str, Any]) -> str:
    """The requested name, or (as LXD) a free random adjective-noun one when none is given.

    Instance names are host-wide (they name LXC containers and libvirt domains), so a
    random name avoids every project's instances.
    """
    if body.get("name") in (None, ""):
        return random_name({r["name"] for r in ctx.instances.cached()})
    return validate.check_name(body.get("name"))


async def prepare(ctx: Context, body: dict[str, Any], project: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate, resolve the image, reserve the record. Returns (record, image)."""
    project_checks.effective(ctx, project, "images")  # 404 for an unknown project
    async with project_checks.guard(ctx, project):  # its limits hold until reserved
        return await _prepare(ctx, body, project)


async def _prepare(ctx: Context, body: dict[str, Any], project: str
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    name = pick_name(ctx, body)
    kind = body.get("type") or CONTAINER
    if kind not in TYPES:
        raise BadRequest(f"Invalid instance type {kind!r}: use {' or '.join(TYPES)}")
    await asyncio.to_thread(ctx.drivers.for_type, kind)  # 400 when libvirtd is not up
    source = body.get("source") or {}
    if not isinstance(source, dict):
        raise BadRequest("Invalid source: expected an object")
    if source.get("type", "image") != "image":
        raise BadRequest(f"Unsupported source type {source.get('type')!r}: image or copy")
    pulled = image_pull.is_pull(source)
    if pulled:  # from an image server: pulled in the operation (build)
        image_pull.check(source)
    if not (source.get("alias") or source.get("fingerprint")):
        raise BadRequest("No image given: set source.alias or source.fingerprint")
    config = validate.check_config(body.get("config"))
    profiles = validate.check_profiles(body.get("profiles"))
    raw_devices = body.get("devices") if isinstance(body.get("devices"), dict) else {}
    project_checks.creating(ctx, project, name, kind, *expand(  # LXD's messages first
        await expand_profiles(ctx, project, profiles), config, raw_devices))
    devices = validate.check_devices(body.get("devices"))
    validate.check_description(body.get("description"))
    validate.check_bool("ephemeral", body.get("ephemeral"))
    if await ctx.instances.get(key(project, name)) is not None:
        raise_duplicate(name)
    pcfg, pdevs = expand(await expand_profiles(ctx, project, profiles), config, devices)
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    _root, root_dev = validate.root_device(pdevs)
    await validate.check_for_type(kind, pcfg)  # LXC's own verdict on raw.lxc, before any work
    await disks.resolve(ctx, {"name": name, "project": project, "type": kind,  # sources,
                              "expanded_config": pcfg}, pdevs, running=False)  # volumes
    if pulled:
        image = {"pull": source, "fingerprint": "(pull)"}
    else:
        image = await ctx.remote.resolve_image(
            project_checks.effective(ctx, project, "images"), source, kind)
    if not image.get("fingerprint"):
        raise NotFound("Image not found")
    rec = records.new_record(name, project, body, config, devices, profiles)
    rec["type"] = kind
    rec["location"] = ctx.location
    rec.update(expanded_config=pcfg, expanded_devices=pdevs, pool=root_dev["pool"])
    try:
        await ctx.instances.create(key(project, name), rec, f"Instance {name!r}")
    except Conflict:
        raise_duplicate(name)
    return rec, image


def raise_duplicate(name: str) -> None:
    raise Conflict(f"Instance {name!r} already exists")


async def nic_setup(ctx: Context, rec: dict[str, Any]) -> tuple[list[Nic], dict[str, str]]:
    """The instance's NICs as the network service resolves them (neutral: each driver
    renders its own form), and the volatile keys that keep MAC and host name stable."""
    cfg, devs = rec["expanded_config"], rec["expanded_devices"]
    nics: list[Nic] = []
    vol: dict[str, str] = {}
    for index, dev in enumerate(nic_names(devs)):
        nic = await ctx.remote.nic_config(
            rec["project"], rec["name"], index, devs[dev],
            cfg.get(f"volatile.{dev}.host_name"), cfg.get(f"volatile.{dev}.hwaddr"))
        nics.append(nic)
        vol[f"volatile.{dev}.hwaddr"] = nic.hwaddr
        if nic.host_name:
            vol[f"volatile.{dev}.host_name"] = nic.host_name
    return nics, vol


# What a create defined each instance with, for the start of the same ``lxc launch``:
# the stock client creates, then starts in a second request (and the API's "start": true
# starts within the create's operation). key -> (monotonic time, the record's expanded
# config and devices as JSON, the NICs). One use each; dropped after FRESH_SECONDS.
_DEFINED: dict[str, tuple[float, str, list[Nic]]] = {}
FRESH_SECONDS = 5.0


def _inputs(rec: dict[str, Any]) -> str:
    return json.dumps([rec["expanded_config"], rec["expanded_devices"]], sort_keys=True)


def remember_defined(rec: dict[str, Any], nics: list[Nic]) -> None:
    """The NICs ``rec`` was just defined with (see :func:`take_defined`)."""
    now = time.monotonic()
    for k in [k for k, (t, _, _) in _DEFINED.items() if now - t > FRESH_SECONDS]:
        del _DEFINED[k]
    _DEFINED[key(rec["project"], rec["name"])] = (now, _inputs(rec), list(nics))


def take_defined(rec: dict[str, Any]) -> list[Nic] | None:
    """The NICs of a create that defined ``rec`` less than FRESH_SECONDS ago, when the
    record is still what it was defined from (no config or device changed since: the
    driver's definition is current too); else None, and the start resolves them again.

    Why: resolving costs a bus round trip to the network service (which also makes sure
    the bridge runs and writes the NIC's static lease and ACL entry: all done by the
    create's resolution a moment ago). A later start asks again: the network may have
    been restarted or changed while the instance was stopped.
    """
    hit = _DEFINED.pop(key(rec["project"], rec["name"]), None)
    if hit is None or time.monotonic() - hit[0] > FRESH_SECONDS or hit[1] != _inputs(rec):
        return None
    return hit[2]


def root_size(devices: dict[str, dict[str, str]]) -> str:
    """The root disk's ``size`` ("" when unset): a container's is its volume's quota."""
    return next((d.get("size", "") for d in devices.values()
                 if d.get("type") == "disk" and d.get("path") == "/"), "")


def with_config(rec: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    """The record with ``extra`` added to its config (and expanded config)."""
    return {**rec, "config": {**rec["config"], **extra},
            "expanded_config": {**rec["expanded_config"], **extra}}


async def build(ctx: Context, rec: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The operation's body: volume, NICs, templates, driver; undone whole on failure."""
    project, name, pool = rec["project"], rec["name"], rec["pool"]
    k = key(project, name)
    undo: list[Undo] = []
    kind = type_of(rec)
    try:
        faults.point("create:after_reserve")
        if "pull" in image:  # nothing to undo yet: a failed pull drops the record only
            image = await image_pull.pull(ctx, project_checks.effective(ctx, project,
                                                                        "images"),
                                          image["pull"], kind)
        drv = ctx.drivers.for_type(kind)
        undo.append(lambda: _ignore_missing(ctx.remote.volume_delete(project, pool, name,
                                                                     kind)))
        # The NICs (network service) do not depend on the volume (storage service): ask
        # both at once. Resolving a NIC makes nothing that would need undoing.
        nic_task = asyncio.ensure_future(nic_setup(ctx, rec))
        try:
            path = Path(await ctx.remote.volume_from_image(project, pool, name,
                                                           image["fingerprint"], kind))
            faults.point("create:after_volume")
            size = root_size(rec["expanded_devices"])
            if size and kind == "container":  # a VM's disk takes it in its driver's create
                await ctx.remote.volume_quota(project, pool, name, size, kind)
            rec = await mutate(ctx.instances, k, lambda r: {**r, "volume": str(path)})
            nics, vol = await nic_task
        finally:
            if not nic_task.done():
                nic_task.cancel()
                await asyncio.gather(nic_task, return_exceptions=True)
            elif not nic_task.cancelled():
                nic_task.exception()  # retrieved: a failed volume reports, not this
        props = {f"image.{p}": str(v) for p, v in (image.get("properties") or {}).items()}
        rec = with_config(rec, {**props, **vol, "volatile.base_image": image["fingerprint"],
                                "volatile.uuid": str(uuid.uuid4())})
        final = await define(ctx, drv, rec, path, nics, undo, "create")
        remember_defined(final, nics)
        return final
    except BaseException:
        await undo_all(ctx, undo, k, rec)
        raise


async def define(ctx: Context, drv: Any, rec: dict[str, Any], path: Path, nics: list[Nic],
                 undo: list[Undo], when: str) -> dict[str, Any]:
    """The last steps of a create or a copy (``when``): the image templates for ``when``,
    the driver's definition (its purge pushed on ``undo``), and the record, Stopped.
    Fault point ``<when>:after_driver``."""
    if drv.capabilities.templates:
        await asyncio.to_thread(image_templates.apply, path, when, rec)
    host = host_name(rec["project"], rec["name"])
    spec = InstanceSpec(host, rec["expanded_config"], rec["expanded_devices"], path, nics)
    undo.append(lambda: asyncio.to_thread(drv.purge, host))
    made = await asyncio.to_thread(drv.create, spec)
    faults.point(f"{when}:after_driver")
    made["volatile.last_state.power"] = "STOPPED"
    final = {**with_config(rec, made), "status": "Stopped"}
    await mutate(ctx.instances, key(rec["project"], rec["name"]), lambda _r: final)
    return final


async def _ignore_missing(call: Awaitable[Any]) -> None:
    try:
        await call
    except NotFound:
        pass


async def undo_all(ctx: Context, undo: list[Undo], k: str, rec: dict[str, Any]) -> None:
    """Run the undo steps in reverse, all of them even when one fails, then drop the record.

    If a step failed, the record stays ("Creating": the journal of what may be left) and
    the cleanup is retried in the background until it succeeds.
    """
    failed = False
    for step in reversed(undo):
        try:
            await step()
        except Exception as exc:  # keep undoing: leave as little as possible
            failed = True
            ctx.log.warning("undo step failed", key=k, error=str(exc))
    if failed:
        reconcile.retry_later(ctx, rec)
        return
    await ctx.instances.delete(k)
