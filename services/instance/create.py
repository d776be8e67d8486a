"""Creating an instance: fast checks answered at once, then the slow part as an operation.

Why two halves: LXD answers an invalid name, a duplicate or an unknown image/profile with
an error envelope, not a failed operation; only the volume copy and the driver work run in
the background. The KV record is reserved (status "Creating") before the operation starts
so a duplicate is a 409 even when two creates race; any failure afterwards undoes every
step in reverse, and a crash mid-way is cleaned up by :mod:`reconcile`.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from shared.errors import BadRequest, Conflict, NotFound
from shared.state import key, mutate

from . import image_templates, records, validate
from .drivers.router import VM
from .records import expand, nic_names

if TYPE_CHECKING:
    from .service import InstanceService


async def expand_profiles(svc: "InstanceService", project: str, names: list[str]
                          ) -> list[dict[str, Any]]:
    out = []
    for name in names:
        found = await svc.profiles.store.get(key(project, name))
        if found is None:
            raise NotFound(f"Profile {name!r} not found")
        out.append(found[0])
    return out


async def prepare(svc: "InstanceService", body: dict[str, Any], project: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate, resolve the image, reserve the record. Returns (record, image)."""
    name = validate.check_name(body.get("name"))
    kind = body.get("type") or "container"
    if kind not in ("container", VM):
        raise BadRequest(f"Invalid instance type {kind!r}: use container or {VM}")
    if kind == VM:
        await asyncio.to_thread(lambda: svc.driver.qemu)  # 400 when libvirtd is not up
    source = body.get("source") or {}
    if not isinstance(source, dict):
        raise BadRequest("Invalid source: expected an object")
    if source.get("type", "image") != "image":
        raise BadRequest(f"Unsupported source type {source.get('type')!r}: only image")
    if source.get("server") or source.get("mode") == "pull":
        raise BadRequest("Remote image servers are not supported: import the image first")
    if not (source.get("alias") or source.get("fingerprint")):
        raise BadRequest("No image given: set source.alias or source.fingerprint")
    config = validate.check_config(body.get("config"))
    devices = validate.check_devices(body.get("devices"))
    profiles = validate.check_profiles(body.get("profiles"))
    validate.check_description(body.get("description"))
    validate.check_bool("ephemeral", body.get("ephemeral"))
    if await svc.instances.get(key(project, name)) is not None:
        raise_duplicate(name)
    pcfg, pdevs = expand(await expand_profiles(svc, project, profiles), config, devices)
    validate.check_config(pcfg)
    validate.check_devices(pdevs)
    _root, root_dev = validate.root_device(pdevs)
    image = await svc.remote.resolve_image(project, source, kind)
    if not image.get("fingerprint"):
        raise NotFound("Image not found")
    rec = records.new_record(name, project, body, config, devices, profiles)
    rec["type"] = kind
    rec.update(expanded_config=pcfg, expanded_devices=pdevs, pool=root_dev["pool"])
    try:
        await svc.instances.create(key(project, name), rec, f"Instance {name!r}")
    except Conflict:
        raise_duplicate(name)
    return rec, image


def raise_duplicate(name: str) -> None:
    raise Conflict(f"Instance {name!r} already exists")


async def nic_setup(svc: "InstanceService", rec: dict[str, Any]
                    ) -> tuple[list[Any], dict[str, str]]:
    """Per-NIC driver input (containers: LXC lines; VMs: the QEMU driver's NIC dicts, a
    tap on the bridge), and the volatile keys that keep MAC and host name stable."""
    cfg, devs = rec["expanded_config"], rec["expanded_devices"]
    lines: list[Any] = []
    vol: dict[str, str] = {}
    for index, dev in enumerate(nic_names(devs)):
        reply = await svc.remote.nic_config(
            rec["project"], rec["name"], index, devs[dev],
            cfg.get(f"volatile.{dev}.host_name"), cfg.get(f"volatile.{dev}.hwaddr"))
        if rec.get("type") == VM:
            lines.append(vm_nic(dev, devs[dev], reply))
        else:
            lines += [f"{k} = {v}" for k, v in reply.lxc]
        vol[f"volatile.{dev}.hwaddr"] = reply.hwaddr
        if reply.host_name:
            vol[f"volatile.{dev}.host_name"] = reply.host_name
    return lines, vol


def vm_nic(dev: str, device: dict[str, str], reply: Any) -> dict[str, Any]:
    """The QEMU driver's NIC dict; only bridged NICs exist for VMs so far."""
    if not reply.bridge:
        raise BadRequest(f"NIC {dev!r}: virtual machines support bridged NICs only "
                         "(network=<bridge> or nictype=bridged)")
    nic: dict[str, Any] = {"name": device.get("name") or dev, "bridge": reply.bridge,
                           "hwaddr": reply.hwaddr, "host_name": reply.host_name}
    if device.get("mtu"):
        nic["mtu"] = int(device["mtu"])
    return nic


def with_config(rec: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    """The record with ``extra`` added to its config (and expanded config)."""
    return {**rec, "config": {**rec["config"], **extra},
            "expanded_config": {**rec["expanded_config"], **extra}}


async def build(svc: "InstanceService", rec: dict[str, Any], image: dict[str, Any]
                ) -> dict[str, Any]:
    """The operation's body: volume, NICs, templates, driver; undone whole on failure."""
    project, name, pool = rec["project"], rec["name"], rec["pool"]
    k = key(project, name)
    undo: list[Callable[[], Awaitable[None]]] = []
    kind = rec.get("type", "container")
    try:
        path = Path(await svc.remote.volume_from_image(project, pool, name,
                                                       image["fingerprint"], kind))
        undo.append(lambda: svc.remote.volume_delete(project, pool, name, kind))
        rec = await mutate(svc.instances, k, lambda r: {**r, "volume": str(path)})
        lines, vol = await nic_setup(svc, rec)
        props = {f"image.{p}": str(v) for p, v in (image.get("properties") or {}).items()}
        rec = with_config(rec, {**props, **vol, "volatile.base_image": image["fingerprint"],
                                "volatile.uuid": str(uuid.uuid4())})
        if kind == VM:
            await asyncio.to_thread(svc.driver.qemu.create, name, rec["expanded_config"],
                                    rec["expanded_devices"], path, lines)
            undo.append(lambda: asyncio.to_thread(svc.driver.qemu.delete, name))
            idmap: dict[str, str] = {}
        else:
            await asyncio.to_thread(image_templates.apply, path, "create", rec)
            idmap = await asyncio.to_thread(
                svc.driver.lxc.create, name, rec["expanded_config"],
                rec["expanded_devices"], path / "rootfs", lines)
            undo.append(lambda: asyncio.to_thread(svc.driver.lxc.delete, name))
            idmap["volatile.idmap.base"] = "0"
        idmap["volatile.last_state.power"] = "STOPPED"
        final = {**with_config(rec, idmap), "status": "Stopped"}
        await mutate(svc.instances, k, lambda _r: final)
        return final
    except BaseException:
        await undo_all(svc, undo, k)
        raise


async def undo_all(svc: "InstanceService", undo: list[Callable[[], Awaitable[None]]],
                   k: str) -> None:
    for step in reversed(undo):
        try:
            await step()
        except Exception as exc:  # keep undoing: leave as little as possible
            svc.log.warning("undo step failed", key=k, error=str(exc))
    await svc.instances.delete(k)
