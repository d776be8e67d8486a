"""NIC, proxy and unix-char/unix-block changes applied to a RUNNING instance.

Why one place: update (``lxc config device add/remove/set``) and profile changes reach a
running instance through :func:`apply`, which does removals then additions and, when a
step fails, undoes the steps already done in reverse, so a failed hot-plug leaves the
instance as it was and the record unchanged (update stores only after this returned).
Everything that can be checked without changing the host is checked first
(:func:`check`). Start and stop call :func:`started`/:func:`stopped` (proxies run while
the container runs; unix devices are made in its fresh ``/dev``), and the service's
setup calls :func:`adopt` so the forwarders that outlived a restart are kept (or
replaced when stale).

NICs of containers are veth pairs made on the host and moved into the container
(:mod:`.drivers.lxc_hotplug`); of VMs, libvirt live attach (:mod:`.drivers.qemu_hotplug`).
A NIC whose ``ipv4.address``/``ipv6.address`` (or ``limits.*``) alone changed is not
re-plugged: the network service is asked for the NIC again (``nic_config``), which applies
the static DHCP lease of its MAC; the guest sees it at its next DHCP renewal, as in LXD.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import faults
from shared.errors import BadRequest, CorralError, NotFound
from shared.messages.network import Nic, NicLeaseRequest

from . import proxy, proxy_nat
from .context import Context
from .create import nic_setup
from .drivers import lxc_hotplug
from .drivers.router import type_of
from .live_changes import HOTPLUG_TYPES, RUNNING, SOFT_NIC_KEYS
from .names import host_of
from .proxy_rules import check_proxy, check_unix
from .records import nic_names

Device = Mapping[str, str]
Devices = Mapping[str, Device]
UNIX = ("unix-char", "unix-block")
LEASE_TIMEOUT = 30.0
JOURNAL = "hotplug.json"  # in the instance's directory, while a hot-plug is under way


def soft_nic_change(before: Device, after: Device) -> bool:
    """Only keys applied without re-plugging the NIC differ."""
    keys = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return all(k.startswith(SOFT_NIC_KEYS) for k in keys)


def changes(old: Devices, new: Devices, types: frozenset[str]
            ) -> tuple[list[str], list[str], list[str]]:
    """(removed, added, soft-changed NICs) among devices of ``types``; a device changed
    otherwise is both removed and added."""
    def of(devs: Devices) -> dict[str, Device]:
        return {n: d for n, d in devs.items() if d.get("type") in types}
    a, b = of(old), of(new)
    removed, added, soft = [], [], []
    for name in sorted(set(a) | set(b)):
        before, after = a.get(name), b.get(name)
        if before == after:
            continue
        if before and after and before.get("type") == after.get("type") == "nic" and \
                soft_nic_change(before, after):
            soft.append(name)
            continue
        if before:
            removed.append(name)
        if after:
            added.append(name)
    return removed, added, soft


@dataclass
class Applied:
    """What :func:`apply` did: the NIC list for the driver's spec, volatile key changes
    for the record (None: remove the key), and how to undo it all."""

    nics: list[Nic] | None = None
    volatile: dict[str, str | None] = field(default_factory=dict)
    undo: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    after: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    journal: Path | None = None  # containers: the intent file (see recover)
    entries: list[list[Any]] = field(default_factory=list)

    def note(self, *entry: Any) -> None:
        """Journal a step before it is taken: a crash from here until the record is
        stored leaves the file, and :func:`recover` puts the instance back to its record
        at the service's next start."""
        if self.journal is None:
            return
        self.entries.append(list(entry))
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.journal)

    def finish(self) -> None:
        """The record says what the instance has: the journal goes."""
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)

    async def rollback(self, ctx: Context) -> None:
        for step in reversed(self.undo):
            try:
                await step()
            except Exception as exc:  # keep undoing the rest; the error is logged
                ctx.log.warning("hotplug undo step failed", error=str(exc))
        self.undo.clear()
        self.finish()

    def record(self, rec: dict[str, Any]) -> dict[str, Any]:
        """``rec`` with the volatile changes in its config and expanded config."""
        out = dict(rec)
        for part in ("config", "expanded_config"):
            cfg = dict(rec[part])
            for k, v in self.volatile.items():
                if v is None:
                    cfg.pop(k, None)
                else:
                    cfg[k] = v
            out[part] = cfg
        return out


# ---- host facts -------------------------------------------------------------------------

def _init_pid(drv: Any, host: str) -> int:
    return drv._running_pid(host)


def _ids(drv: Any, host: str) -> Callable[[int, int], tuple[int, int]]:
    imap = drv.idmap(host)
    if imap is None:
        return lambda u, g: (u, g)
    return lambda u, g: (imap.uid_to_host(u), imap.gid_to_host(g))


def _run_dir(drv: Any, host: str) -> Path:
    return Path(drv.spec_root) / host


def unix_node(name: str, dev: Device) -> tuple[int, int] | None:
    """(major, minor) of a unix device: its keys, else its host ``source``'s; None for a
    ``required=false`` device whose source is absent. 400 for a source of the wrong kind."""
    check_unix(name, dev)
    if dev.get("major"):
        return int(dev["major"]), int(dev["minor"])
    try:
        st = os.stat(dev["source"])
    except FileNotFoundError:
        if dev.get("required", "true").lower() in ("false", "0", "no", "off"):
            return None
        raise NotFound(f"Device {name!r}: source {dev['source']!r} does not exist on the "
                       "host") from None
    want = stat.S_ISCHR if dev["type"] == "unix-char" else stat.S_ISBLK
    if not want(st.st_mode):
        kind = "character" if dev["type"] == "unix-char" else "block"
        raise BadRequest(f"Device {name!r}: source {dev['source']!r} is not a {kind} device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _current_nics(drv: Any, host: str, kind: str) -> list[Nic]:
    data = drv._load(host)
    raw = data["spec"].get("nics", []) if kind == "container" else data.get("nics", [])
    return [Nic.model_validate({**n, "mtu": n.get("mtu") or None}) for n in raw]


# ---- checks -------------------------------------------------------------------------------

def is_nat(dev: Device) -> bool:
    return dev.get("type") == "proxy" and \
        (dev.get("nat") or "").lower() in ("true", "1", "yes", "on")


def check(kind: str, new: Devices, added: list[str]) -> dict[str, tuple[int, int] | None]:
    """Host checks of the devices to add, before anything changes; returns the unix
    devices' (major, minor)."""
    nodes: dict[str, tuple[int, int] | None] = {}
    for name in added:
        dev = new[name]
        if dev["type"] == "proxy":
            check_proxy(name, dev)
            if kind != "container":  # never stored to do nothing at start
                raise BadRequest(f"Device {name!r}: proxy devices of virtual machines need "
                                 "nat=true (LXD's rule), which Corral does not offer for "
                                 "VMs yet")
            if is_nat(dev):
                proxy_nat.check(name, dev, new)
        elif dev["type"] in UNIX:
            if kind != "container":
                raise BadRequest(f"Device {name!r}: {dev['type']} devices are for "
                                 "containers only (a virtual machine has its own kernel "
                                 "and device nodes)")
            nodes[name] = unix_node(name, dev)
    return nodes


# ---- apply --------------------------------------------------------------------------------

async def apply(ctx: Context, rec: dict[str, Any], drv: Any, host: str, old: Devices,
                new: Devices, status: str) -> Applied:
    """Hot-plug the NIC/proxy/unix differences between ``old`` and ``new`` into the
    running instance; all or nothing (see the module's docstring)."""
    done = Applied()
    if status not in RUNNING:
        return done
    kind = type_of(rec)
    removed, added, soft = changes(old, new, HOTPLUG_TYPES.get(kind, frozenset()))
    if not (removed or added or soft):
        return done
    nodes = await asyncio.to_thread(check, kind, new, added)
    if kind == "container":
        done.journal = _run_dir(drv, host) / JOURNAL
    try:
        nic_changes = [n for n in removed + added + soft
                       if (new.get(n) or old.get(n) or {}).get("type") == "nic"]
        if nic_changes:
            await _nics(ctx, rec, drv, host, kind, old, new, removed, added, soft, done)
        for name in removed:
            dev = old[name]
            if is_nat(dev):
                await asyncio.to_thread(proxy_nat.remove, host, name)
                done.undo.append(_later(_nat_apply, host, name, dev, old))
            elif dev["type"] == "proxy":
                await asyncio.to_thread(proxy.stop, _run_dir(drv, host), name)
                done.undo.append(_later(proxy.start, _run_dir(drv, host), name, dev,
                                        _init_pid(drv, host), _ids(drv, host)))
            elif dev["type"] in UNIX:
                node = await asyncio.to_thread(unix_node_or_none, name, dev)
                if node:
                    done.note("unix-", name, dict(dev), list(node))
                    await asyncio.to_thread(_unix_detach, drv, host, name, dev, node)
                    done.undo.append(_later(_unix_attach, drv, host, name, dev, node))
        for name in added:
            dev = new[name]
            if is_nat(dev):
                done.note("nat+", name)
                await asyncio.to_thread(_nat_apply, host, name, dev, new)
                done.undo.append(_later(proxy_nat.remove, host, name))
            elif dev["type"] == "proxy":
                await asyncio.to_thread(proxy.start, _run_dir(drv, host), name, dev,
                                        _init_pid(drv, host), _ids(drv, host))
                done.undo.append(_later(proxy.stop, _run_dir(drv, host), name))
            elif dev["type"] in UNIX and nodes.get(name):
                node = nodes[name]
                done.note("unix+", name, dict(dev), list(node))
                await asyncio.to_thread(_unix_attach, drv, host, name, dev, node)
                done.undo.append(_later(_unix_detach, drv, host, name, dev, node))
        faults.point("hotplug:after_devices")
    except BaseException:
        await done.rollback(ctx)
        raise
    for step in done.after:
        try:
            await step()
        except Exception as exc:  # a lease left behind is harmless; the NIC is gone
            ctx.log.warning("releasing an unplugged NIC's leases failed", error=str(exc))
    return done


def _nat_apply(host: str, name: str, dev: Device, devices: Devices) -> None:
    listen, connect = proxy_nat.check(name, dev, devices)
    proxy_nat.apply(host, name, listen, connect)


def unix_node_or_none(name: str, dev: Device) -> tuple[int, int] | None:
    try:
        return unix_node(name, dev)
    except (BadRequest, NotFound):
        return None


def _later(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        await asyncio.to_thread(fn, *args)
    return step


def _unix_path(dev: Device) -> str:
    return dev.get("path") or dev["source"]


def _unix_attach(drv: Any, host: str, name: str, dev: Device, node: tuple[int, int]
                 ) -> None:
    uid, gid = _ids(drv, host)(int(dev.get("uid") or 0), int(dev.get("gid") or 0))
    mode = int(dev.get("mode") or "0660", 8)
    lxc_hotplug.unix_attach(drv._container(host), _init_pid(drv, host),
                            _run_dir(drv, host) / "devices", name, _unix_path(dev),
                            dev["type"], node[0], node[1], uid, gid, mode)


def _unix_detach(drv: Any, host: str, name: str, dev: Device, node: tuple[int, int]
                 ) -> None:
    lxc_hotplug.unix_detach(drv._container(host), _init_pid(drv, host),
                            _run_dir(drv, host) / "devices", name, _unix_path(dev),
                            dev["type"], node[0], node[1])


ADDRESS_KEYS = ("ipv4.address", "ipv6.address")


async def _lease_set(ctx: Context, rec: dict[str, Any], network: str, hwaddr: str,
                     dev: Device) -> None:
    await ctx.remote.bus.request("network", "lease_set", NicLeaseRequest(
        project=rec["project"], network=network, hwaddr=hwaddr, instance=rec["name"],
        ipv4_address=dev.get("ipv4.address", ""), ipv6_address=dev.get("ipv6.address", "")),
        node=ctx.remote.node, timeout=LEASE_TIMEOUT)


async def _lease(ctx: Context, rec: dict[str, Any], name: str, before: Device,
                 after: Device, done: Applied) -> None:
    """A running NIC's changed ``ipv4.address``/``ipv6.address``: its static DHCP lease
    (the network service checks the address and drops the MAC's dynamic lease of another
    one, so the guest's next DHCP request gets it); undone with the old addresses."""
    network = after.get("network")
    hwaddr = rec["expanded_config"].get(f"volatile.{name}.hwaddr", "")
    if not network or not hwaddr or \
            all(before.get(k, "") == after.get(k, "") for k in ADDRESS_KEYS):
        return
    await _lease_set(ctx, rec, network, hwaddr, after)
    done.undo.append(lambda: _lease_set(ctx, rec, network, hwaddr, before))


async def _nics(ctx: Context, rec: dict[str, Any], drv: Any, host: str, kind: str,
                old: Devices, new: Devices, removed: list[str], added: list[str],
                soft: list[str], done: Applied) -> None:
    """Resolve the new NIC list (the network service applies static leases and starts
    networks), unplug removed NICs, plug added ones, shape their limits."""
    cfg = dict(rec["expanded_config"])
    for name in soft:  # a new static address: before nic_config would write it quietly
        await _lease(ctx, rec, name, old[name], new[name], done)
    for name in removed:  # a re-plugged device keeps its MAC and host-side name
        if name not in new:
            cfg.pop(f"volatile.{name}.hwaddr", None)
            cfg.pop(f"volatile.{name}.host_name", None)
    resolved, vol = await nic_setup(ctx, {**rec, "expanded_config": cfg,
                                          "expanded_devices": dict(new)})
    current = await asyncio.to_thread(_current_nics, drv, host, kind)
    by_mac = {n.hwaddr: n for n in current}
    order = nic_names(new)
    final: list[Nic] = []
    for i, name in enumerate(order):
        mac = rec["expanded_config"].get(f"volatile.{name}.hwaddr", "")
        keep = name not in added and mac in by_mac
        final.append(by_mac[mac] if keep else resolved[i])
    # A hot-plugged NIC without a 'name' takes the first ethN no other NIC uses (its
    # index-based default may be taken by a NIC that started before it).
    for i, name in enumerate(order):
        if name in added and not new[name].get("name"):
            taken = {n.name for j, n in enumerate(final) if j != i}
            if final[i].name in taken:
                free = next(f"eth{k}" for k in range(len(final) + 1)
                            if f"eth{k}" not in taken)
                final[i] = final[i].model_copy(update={"name": free})
    old_macs = {name: rec["expanded_config"].get(f"volatile.{name}.hwaddr", "")
                for name in removed if old[name].get("type") == "nic"}
    for name in removed:
        if old[name].get("type") != "nic":
            continue
        nic = by_mac.get(old_macs[name])
        if nic is None:
            continue
        done.note("nic-", nic.model_dump())
        await asyncio.to_thread(_nic_detach, drv, host, kind, nic)
        done.undo.append(_later(_nic_attach, drv, host, kind, nic))
        if name not in new:
            done.volatile.update({f"volatile.{name}.hwaddr": None,
                                  f"volatile.{name}.host_name": None})
            if nic.network:  # its leases (static, dynamic) and ifb go once all went well
                done.after.append(lambda nic=nic: ctx.remote.nic_release(
                    rec["project"], nic.network, [nic.hwaddr],
                    [nic.host_name] if nic.host_name else []))
    for i, name in enumerate(order):
        if name not in added:
            continue
        nic = final[i]
        done.note("nic+", nic.model_dump())
        await asyncio.to_thread(_nic_attach, drv, host, kind, nic)
        done.undo.append(_later(_nic_detach, drv, host, kind, nic))
        if nic.host_name and any(k.startswith("limits.") for k in new[name]):
            await ctx.remote.nic_limits(rec["project"], nic.host_name, dict(new[name]))
        done.volatile[f"volatile.{name}.hwaddr"] = vol[f"volatile.{name}.hwaddr"]
        if nic.host_name:
            done.volatile[f"volatile.{name}.host_name"] = nic.host_name
    done.nics = final


def _nic_attach(drv: Any, host: str, kind: str, nic: Nic) -> None:
    if kind == "container":
        lxc_hotplug.nic_attach(_init_pid(drv, host), nic)
    else:
        from .drivers import qemu_hotplug  # libvirt: ~11 MiB, loaded once a VM is touched
        qemu_hotplug.nic_attach(drv, host, nic)


def _nic_detach(drv: Any, host: str, kind: str, nic: Nic) -> None:
    if kind == "container":
        lxc_hotplug.nic_detach(nic.host_name)
    else:
        from .drivers import qemu_hotplug
        qemu_hotplug.nic_detach(drv, host, nic)


# ---- start, stop, service start -------------------------------------------------------------

def _sync(drv: Any, host: str, devices: Devices, running: bool) -> None:
    """Forwarders and NAT rules exactly as ``devices`` say (none when not running)."""
    pid = _init_pid(drv, host) if running else None
    proxy.sync(_run_dir(drv, host), pid,
               {n: d for n, d in devices.items() if not is_nat(d)}, _ids(drv, host))
    for name, dev in sorted(devices.items()):
        if is_nat(dev):
            if running:
                _nat_apply(host, name, dev, devices)
            else:
                proxy_nat.remove(host, name)


async def check_start(ctx: Context, rec: dict[str, Any]) -> None:
    """What :func:`started` will need, checked before the instance starts (400/404)."""
    devs = rec["expanded_devices"]
    names = sorted(n for n, d in devs.items() if d.get("type") in ("proxy", *UNIX))
    if names:  # most instances have none: no thread hop on their start
        await asyncio.to_thread(check, type_of(rec), devs, names)


async def started(ctx: Context, rec: dict[str, Any]) -> None:
    """After a container started: its unix devices and proxies. A failure stops nothing
    here; the caller (start) reports it and the instance is stopped by its undo."""
    devs = rec["expanded_devices"]
    if type_of(rec) != "container" or not any(d.get("type") in ("proxy", *UNIX)
                                              for d in devs.values()):
        return
    drv, host = ctx.drivers.for_instance(rec), host_of(rec)
    for name, dev in sorted(devs.items()):
        if dev.get("type") in UNIX:
            node = await asyncio.to_thread(unix_node, name, dev)
            if node:
                await asyncio.to_thread(_unix_attach, drv, host, name, dev, node)
    await asyncio.to_thread(_sync, drv, host, devs, True)


async def stopped(ctx: Context, rec: dict[str, Any]) -> None:
    """After a container stopped: its forwarders go (they also exit on their own when
    its init is gone)."""
    if type_of(rec) != "container" or not any(d.get("type") == "proxy"
                                              for d in rec["expanded_devices"].values()):
        return
    drv = ctx.drivers.for_instance(rec)
    nat = {n: d for n, d in rec["expanded_devices"].items() if is_nat(d)}
    await asyncio.to_thread(_sync, drv, host_of(rec), nat, False)


def recover(drv: Any, host: str, rec: dict[str, Any], running: bool) -> list[str]:
    """Put a container whose hot-plug a crash interrupted back to its record: what was
    being added and is not recorded goes, what was being removed and is still recorded
    comes back. Returns the errors met (each step is tried)."""
    path = _run_dir(drv, host) / JOURNAL
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    devs, cfg = rec.get("expanded_devices", {}), rec.get("expanded_config", {})
    macs = {cfg.get(f"volatile.{n}.hwaddr") for n in nic_names(devs)}
    errors = []
    for kind, *data in reversed(entries):
        try:
            if kind in ("nic+", "nic-"):
                nic = Nic.model_validate(data[0])
                if kind == "nic+" and nic.hwaddr not in macs:
                    lxc_hotplug.nic_detach(nic.host_name)
                elif kind == "nic-" and nic.hwaddr in macs and running:
                    try:
                        lxc_hotplug.nic_attach(_init_pid(drv, host), nic)
                    except CorralError:
                        pass  # still there: the unplug never happened
            elif kind in ("unix+", "unix-"):
                name, dev, node = data[0], data[1], tuple(data[2])
                recorded = devs.get(name) == dev
                node_file = lxc_hotplug.host_node(_run_dir(drv, host) / "devices", name)
                if kind == "unix+" and not recorded:
                    if running:
                        _unix_detach(drv, host, name, dev, node)
                    node_file.unlink(missing_ok=True)
                elif kind == "unix-" and recorded and running and not node_file.exists():
                    _unix_attach(drv, host, name, dev, node)
            elif kind == "nat+" and not is_nat(devs.get(data[0]) or {}):
                proxy_nat.remove(host, data[0])
        except Exception as exc:  # one step must not keep the others from running
            errors.append(f"{kind} {data!r}: {exc}")
    path.unlink(missing_ok=True)
    return errors


async def deleted(rec: dict[str, Any]) -> None:
    """After a container's definition went: the NAT rules of one stopped from inside
    (its forwarders ended with its init; their files went with its directory)."""
    for name, dev in rec.get("expanded_devices", {}).items():
        if is_nat(dev):
            await asyncio.to_thread(proxy_nat.remove, host_of(rec), name)


async def adopt(ctx: Context) -> None:
    """At service start: undo interrupted hot-plugs (see :func:`recover`); keep the
    forwarders of running containers that are still right, start missing or stale ones,
    end those of stopped containers; NAT rules likewise."""
    for rec in ctx.local():
        if type_of(rec) != "container" or rec.get("status") in ("Creating", "Deleting"):
            continue
        proxies = {n: d for n, d in rec.get("expanded_devices", {}).items()
                   if d.get("type") == "proxy"}
        try:
            drv = ctx.drivers.for_instance(rec)
            host = host_of(rec)
            run_dir = _run_dir(drv, host)
            journal = (run_dir / JOURNAL).exists()
            if not proxies and not journal and not proxy.names(run_dir):
                continue
            running = await asyncio.to_thread(ctx.drivers.host_status, rec) in RUNNING
            if journal:
                errors = await asyncio.to_thread(recover, drv, host, rec, running)
                ctx.log.info("interrupted hot-plug undone", instance=rec.get("name"),
                             errors=errors)
            await asyncio.to_thread(_sync, drv, host, proxies, running)
        except Exception as exc:  # one instance's devices must not stop the service
            ctx.log.warning("device adoption failed", instance=rec.get("name"),
                            error=str(exc))
