"""QEMU virtual machines through libvirt-python (the shape of LXD's driver_qemu.go, short).

Why these choices: libvirt is the truth for what exists and runs; a domain is ours when
its ``<metadata>`` names a vmdir under our ``vmpath`` (so two Corral roots sharing one
libvirtd never touch each other's VMs). Our inputs live in ``vmpath/<name>/corral.json``
and the domain XML is re-rendered from them at every start, which is how config changes
that cannot apply live take effect. The disk is a qcow2 overlay ``root.qcow2`` next to
the image's ``rootfs.img`` in the root volume, with a relative backing path, so the
storage service can snapshot or move the volume as one directory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import termios
import threading
import time
import tty
import uuid
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import libvirt

from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound

from .. import limits
from ..names import split_host_name
from . import qemu_agent, qemu_events, qemu_host, qemu_xml
from .base import (
    Capabilities,
    DiskMount,
    ExecProcess,
    InstanceDriver,
    InstanceSpec,
    Nic,
    SpecDir,
    check_command,
    make_private,
)

DISK = "root.qcow2"
IMAGE = "rootfs.img"
DEFAULT_MEMORY = 1024 * 2**20  # LXD's default for VMs
DEFAULT_CMDLINE = "root=/dev/vda rw console=ttyS0"
LIST_AGENT_TIMEOUT = 0.5  # s: a list waits no longer than this for one guest's addresses
def _changes_state(fn):
    """The driver changes the domain's state itself: what the event watch knows of it is
    dropped before and after, so the next read asks libvirt rather than wait for the
    event (an ``lxc exec`` right after ``lxc start`` must see the VM running)."""
    @functools.wraps(fn)
    def wrapper(self: "QemuDriver", name: str, *args, **kw):
        self._forget_state(name)
        try:
            return fn(self, name, *args, **kw)
        finally:
            self._forget_state(name)
    return wrapper


_STATUS = {libvirt.VIR_DOMAIN_RUNNING: ("Running", 103),
           libvirt.VIR_DOMAIN_BLOCKED: ("Running", 103),
           libvirt.VIR_DOMAIN_SHUTDOWN: ("Running", 103),  # shutting down, still up
           libvirt.VIR_DOMAIN_PAUSED: ("Frozen", 110),
           libvirt.VIR_DOMAIN_PMSUSPENDED: ("Frozen", 110),
           libvirt.VIR_DOMAIN_SHUTOFF: ("Stopped", 102),
           libvirt.VIR_DOMAIN_CRASHED: ("Error", 112)}


class QemuDriver(SpecDir, InstanceDriver):
    """VMs under one ``vmpath`` on one libvirtd (``qemu:///system`` by default)."""

    capabilities = Capabilities(instance_type="virtual-machine",
                                live_limits=frozenset({"limits.cpu", "limits.memory"}),
                                exec=True, exec_pty=True, files=True, freeze=True,
                                console=True, rename=False, hotplug_disks=True,
                                stateful=True)

    def __init__(self, vmpath: Path, uri: str = qemu_host.URI) -> None:
        self.vmpath = Path(vmpath).resolve()
        self.vmpath.mkdir(parents=True, exist_ok=True)
        make_private(self.vmpath)
        self.uri = uri
        # name -> (when, link) that exec_ready checked, for the exec_start that follows
        self._ready_links: dict[str, tuple[float, qemu_agent.AgentLink]] = {}
        self._exec_doms: dict[str, libvirt.virDomain] = {}  # name -> handle, for exec_ready
        self._events: qemu_events.DomainWatch | None = None
        self._events_lock = threading.Lock()

    @staticmethod
    def accel() -> str:
        """"kvm" or "tcg": what VMs here run with (for ``GET /1.0`` and instance state)."""
        return qemu_host.accel()

    # ---- definition -------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        return qemu_host.connect(self.uri)

    @property
    def spec_root(self) -> Path:
        return self.vmpath

    def _watch(self) -> qemu_events.DomainWatch | None:
        """The event watch of the current connection (made anew after a reconnect);
        None while it has no events: callers then ask libvirt."""
        conn = self.conn
        with self._events_lock:
            w = self._events
            if w is None or w.conn is not conn:
                if w is not None:
                    w.close()
                w = self._events = qemu_events.DomainWatch(conn, self._agent_gone)
        return w if w.alive else None

    def _forget_state(self, name: str) -> None:
        w = self._events
        if w is not None:
            w.forget(name)

    def _agent_gone(self, name: str) -> None:
        """(libvirt's event thread) the guest closed the agent port: drop our connection."""
        try:
            qemu_agent.drop(self._load(name)["agent_socket"])
        except (NotFound, OSError, ValueError, KeyError):
            pass  # not one of ours

    def _domain(self, name: str) -> libvirt.virDomain:
        self._load(name)
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            raise NotFound(f"Instance {name!r} has no libvirt domain; recreate it") from None

    def create(self, spec: InstanceSpec) -> dict[str, str]:
        """Define a VM: a qcow2 overlay on the volume's image, a libvirt domain."""
        name, config, devices = spec.name, spec.config, spec.devices
        d = self._dir(name)
        root = Path(spec.volume).resolve()
        if not (root / IMAGE).is_file() and not (root / DISK).is_file():
            raise BadRequest(f"Root volume {root} holds no {IMAGE}: is it a VM image?")
        limits.validate_limits(config)
        nics = [_check_nic(n) for n in spec.nics]
        size = _root_size(devices)
        try:
            self.conn.lookupByName(name)
            raise Conflict(f"A libvirt domain named {name!r} already exists on {self.uri}")
        except libvirt.libvirtError:
            pass
        try:
            self._make_dir(name)
        except FileExistsError:
            raise Conflict(f"Instance {name!r} already exists in {self.vmpath}") from None
        made_disk = not (root / DISK).exists()
        try:
            if made_disk:
                qemu_host.qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", IMAGE,
                                   str(root / DISK))
            if size:
                _grow(root / DISK, size)
            data = {"name": name, "config": dict(config), "devices": dict(devices),
                    "rootfs_path": str(root), "nics": [n.model_dump() for n in nics],
                    "agent_socket": _socket_path(d), "uuid": str(uuid.uuid4())}
            self._save(name, data)
            self.conn.defineXML(self._render(name, data))
        except BaseException:
            if made_disk:
                (root / DISK).unlink(missing_ok=True)
            shutil.rmtree(d, ignore_errors=True)
            raise
        return {}

    def _render(self, name: str, data: dict) -> str:
        cfg, root = data["config"], Path(data["rootfs_path"])
        mem = limits.parse_bytes("limits.memory", cfg["limits.memory"]) \
            if cfg.get("limits.memory") else DEFAULT_MEMORY
        host = limits.host_cpus()
        cpus = limits.parse_cpuset(cfg["limits.cpu"], host) if cfg.get("limits.cpu") else [0]
        pinned = "-" in cfg.get("limits.cpu", "") or "," in cfg.get("limits.cpu", "")
        kernel, initrd, cmdline = _boot_files(root)
        cmdline = f"{cmdline} corral.hostname={split_host_name(name)[1]}" if kernel else ""
        spec = qemu_xml.DomainSpec(
            name=name, uuid=data["uuid"], vmdir=str(self._dir(name)), disk=str(root / DISK),
            memory_kib=mem // 1024, max_memory_kib=mem // 1024, vcpus=len(cpus),
            max_vcpus=max(len(host), len(cpus)),
            console_log=str(self._dir(name) / "console.log"),
            agent_socket=data["agent_socket"], domain_type=qemu_host.domain_type(),
            emulator=qemu_host.EMULATOR, cpuset=",".join(map(str, cpus)) if pinned else "",
            kernel=kernel, initrd=initrd, cmdline=cmdline,
            nics=_nics(data), disks=_disks_with_targets(data))
        return qemu_xml.render(spec)

    def update(self, name: str, config: dict[str, str], devices: dict[str, dict[str, str]],
               nics: list[Nic] | None = None, disks: list[DiskMount] | None = None) -> None:
        """Store new config/devices; they apply at next start (limits: see apply_limits_live)."""
        limits.validate_limits(config)
        data = self._load(name)
        data.update(config=dict(config), devices=dict(devices))
        if nics is not None:
            data["nics"] = [_check_nic(n).model_dump() for n in nics]
        if disks is not None:
            _set_disks(data, disks)
        size = _root_size(devices)
        if size:
            _grow(Path(data["rootfs_path"]) / DISK, size)
        self._save(name, data)
        self.conn.defineXML(self._render(name, data))

    def rename(self, name: str, new_name: str, volume: Path | None = None) -> None:
        raise BadRequest("Renaming virtual machines is not supported yet")

    def names_on_host(self) -> list[str]:
        try:
            return sorted(p.name for p in self.vmpath.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    @_changes_state
    def purge(self, name: str) -> None:
        """Force off and undefine a VM of ours, then drop its directory."""
        d = self._dir(name)
        try:
            dom = self.conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            self.delete(name)
        except CorralError:
            shutil.rmtree(d, ignore_errors=True)

    @_changes_state
    def delete(self, name: str) -> None:
        self._exec_doms.pop(name, None)
        dom = self._domain_or_none(name)
        if dom is not None:
            if dom.isActive():
                raise Conflict(f"Instance {name!r} is running; stop it first")
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def _domain_or_none(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._domain(name)
        except NotFound:
            if not self._dir(name).exists():
                raise
            return None

    # ---- lifecycle --------------------------------------------------------------------

    @_changes_state
    def start(self, name: str) -> None:
        data = self._load(name)
        dom = self._domain(name)
        if dom.isActive():
            raise Conflict(f"Instance {name!r} is already running")
        qemu_agent.forget(data["agent_socket"])
        Path(data["agent_socket"]).unlink(missing_ok=True)
        try:
            dom = self.conn.defineXML(self._render(name, data))
            dom.create()
        except libvirt.libvirtError as e:
            raise Internal(f"Failed to start instance {name!r}: {e.get_error_message()}"
                           f"{_qemu_log_tail(name)}") from None

    @_changes_state
    def stop(self, name: str, timeout: float = 30, force: bool = False) -> None:
        """ACPI power button, then ``destroy`` after ``timeout`` if the guest ignores it."""
        dom = self._domain(name)
        if not dom.isActive():
            raise Conflict(f"Instance {name!r} is already stopped")
        if not force and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()  # a paused guest cannot see the power button
        if not force:
            try:
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError:
                pass  # e.g. already shutting down; the wait below decides
            if _wait_inactive(dom, timeout):
                return
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            if dom.isActive():
                raise Internal(f"Failed to stop instance {name!r}: "
                               f"{e.get_error_message()}") from None

    # ---- memory state: libvirt internal snapshots in root.qcow2 ---------------------------

    @_changes_state
    def save_memory(self, name: str, tag: str) -> str:
        """An internal snapshot (memory, devices and disk, inside ``root.qcow2``) of the
        running VM, which keeps running; returns its libvirt XML (to redefine it once the
        disk has been copied back, see :meth:`resume_memory`)."""
        dom = self._domain(name)
        if not dom.isActive():
            raise BadRequest(f"Instance {name!r} isn't running: no memory state to save")
        self.drop_memory(name, tag)  # what a killed snapshot may have left under the tag
        try:
            snap = dom.snapshotCreateXML(
                f"<domainsnapshot><name>{xml_escape(tag)}</name></domainsnapshot>", 0)
            return snap.getXMLDesc(0)
        except libvirt.libvirtError as e:
            raise BadRequest(f"Cannot save the memory state of {name!r}: "
                             f"{e.get_error_message()}") from None

    def drop_memory(self, name: str, tag: str) -> None:
        dom = self._domain(name)
        try:
            dom.snapshotLookupByName(tag).delete(0)
        except libvirt.libvirtError:
            pass  # none under that tag

    @_changes_state
    def resume_memory(self, name: str, tag: str, saved: str) -> None:
        """Redefine the saved snapshot (libvirt forgot it when the disk moved), revert the
        stopped VM to it (running), then drop it from the disk."""
        data = self._load(name)
        dom = self._domain(name)
        if dom.isActive():
            raise Conflict(f"Instance {name!r} is running; stop it first")
        qemu_agent.forget(data["agent_socket"])
        Path(data["agent_socket"]).unlink(missing_ok=True)
        try:
            try:
                snap = dom.snapshotLookupByName(tag)
            except libvirt.libvirtError:
                snap = dom.snapshotCreateXML(saved,
                                             libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
            dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
        except libvirt.libvirtError as e:
            raise Internal(f"Failed to resume {name!r} from its saved state: "
                           f"{e.get_error_message()}{_qemu_log_tail(name)}") from None
        self.drop_memory(name, tag)

    @_changes_state
    def freeze(self, name: str) -> None:
        dom = self._domain(name)
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise Conflict(f"Instance {name!r} is {self._status(dom)[0].lower()}, not running")
        dom.suspend()

    @_changes_state
    def unfreeze(self, name: str) -> None:
        dom = self._domain(name)
        if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            raise Conflict(f"Instance {name!r} is {self._status(dom)[0].lower()}, not frozen")
        dom.resume()

    # ---- extra disks -----------------------------------------------------------------

    def disks_of(self, name: str) -> list[DiskMount]:
        return [m for m, _t in _disks_with_targets(self._load(name))]

    def _live_domain(self, name: str) -> libvirt.virDomain:
        dom = self._domain(name)
        if not dom.isActive():
            raise Conflict(f"Instance {name!r} is not running")
        return dom

    def disk_attach(self, name: str, disk: DiskMount) -> None:
        """Hot-plug a virtio-blk disk into the running VM (PCI hotplug; the guest's
        kernel sees a new /dev/vdX). The spec is saved only by the caller's update."""
        if disk.kind == "dir":
            raise BadRequest(f"Device {disk.name!r}: directories cannot be attached to a "
                             "virtual machine yet")
        dom = self._live_domain(name)
        data = self._load(name)
        _set_disks(data, [*(m for m, _t in _disks_with_targets(data) if m.name != disk.name),
                          disk])
        target = dict((m.name, t) for m, t in _disks_with_targets(data))[disk.name]
        xml = qemu_xml.ET.tostring(qemu_xml.extra_disk(disk, target), encoding="unicode")
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            raise BadRequest(f"Failed to attach disk {disk.name!r} to the running VM: "
                             f"{e.get_error_message()}") from None
        self._save(name, data)

    def disk_detach(self, name: str, disk: DiskMount) -> None:
        """Unplug the disk (the guest is asked to release it; waited for a while)."""
        dom = self._live_domain(name)
        alias = qemu_xml.disk_alias(disk.name)
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED and alias in dom.XMLDesc(0):
            raise BadRequest(f"Disk {disk.name!r} cannot be unplugged while the VM is "
                             "paused (its guest must release it): resume it first")
        try:
            dom.detachDeviceAlias(alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            if alias not in dom.XMLDesc(0):
                return  # not attached: nothing to do
            raise BadRequest(f"Failed to detach disk {disk.name!r} from the running VM: "
                             f"{e.get_error_message()}") from None
        deadline = time.monotonic() + DETACH_TIMEOUT
        while alias in dom.XMLDesc(0):
            if time.monotonic() > deadline:
                raise BadRequest(f"The guest did not release disk {disk.name!r} within "
                                 f"{DETACH_TIMEOUT:.0f} s; stop the instance to remove it")
            time.sleep(0.2)
        data = self._load(name)
        _set_disks(data, [m for m, _t in _disks_with_targets(data) if m.name != disk.name])
        self._save(name, data)

    def disk_limits(self, name: str, disks: list[DiskMount]) -> None:
        """``limits.*`` of attached disks through libvirt's block I/O tuning."""
        dom = self._live_domain(name)
        targets = dict((m.name, t) for m, t in _disks_with_targets(self._load(name)))
        for m in disks:
            if m.name not in targets:
                continue
            params = {"read_bytes_sec": m.read_bps, "write_bytes_sec": m.write_bps,
                      "read_iops_sec": m.read_iops, "write_iops_sec": m.write_iops}
            try:
                dom.setBlockIoTune(targets[m.name], params, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as e:
                raise BadRequest(f"Failed to set the limits of disk {m.name!r}: "
                                 f"{e.get_error_message()}") from None

    # ---- state ------------------------------------------------------------------------

    @staticmethod
    def _status(dom: libvirt.virDomain) -> tuple[str, int]:
        return _STATUS.get(dom.state()[0], ("Error", 112))

    def host_status(self, name: str) -> str:
        """libvirt's view: from the event watch when it knows, else one round trip (then
        kept until the domain's next event)."""
        w = self._watch()
        gen = 0
        if w is not None:
            known = w.state(name)
            if known is not None:
                return _STATUS.get(known, ("Error", 112))[0]
            gen = w.generation(name)
        try:
            state = self._domain(name).state()[0]
        except NotFound:
            return "Stopped"
        except libvirt.libvirtError:  # undefined while we asked
            return "Stopped"
        if w is not None:
            w.seed(name, gen, state=state)
        return _STATUS.get(state, ("Error", 112))[0]

    def state(self, name: str) -> dict:
        data = self._load(name)
        return self._state(self._domain(name), data)

    def _state(self, dom: libvirt.virDomain, data: dict,
               agent_timeout: float | None = None) -> dict:
        status, code = self._status(dom)
        out = {"status": status, "status_code": code, "pid": 0, "processes": -1,
               "cpu": {"usage": 0},
               "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0,
                          "total": 0},
               "network": None, "disk": {}, "accel": qemu_host.accel()}
        if code in (102, 112):
            return out
        try:
            out["pid"] = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
            out["cpu"]["usage"] = dom.getCPUStats(True)[0].get("cpu_time", 0)
            mem = dom.memoryStats()
        except (OSError, ValueError, libvirt.libvirtError):
            return out  # it stopped while we looked
        total = mem.get("actual", 0) * 1024
        if "available" in mem and "unused" in mem:
            used = (mem["available"] - mem["unused"]) * 1024
        else:
            used = mem.get("rss", 0) * 1024
        out["memory"].update(usage=used, total=total)
        out["network"] = _tap_counters(data["nics"])
        self._agent_state(dom, data, out, agent_timeout)
        return out

    def _agent_state(self, dom: libvirt.virDomain, data: dict, out: dict,
                     timeout: float | None) -> None:
        """Guest's own view (processes, memory, addresses) when its agent answers; a
        guest whose agent is down is known at once (libvirt's channel state)."""
        try:
            guest = qemu_agent.AgentLink.for_domain(dom.name(), dom,
                                                    data["agent_socket"]).state(timeout)
        except CorralError:
            return
        for key in ("processes",):
            if key in guest:
                out[key] = guest[key]
        if isinstance(guest.get("memory"), dict):
            out["memory"].update({k: v for k, v in guest["memory"].items() if k in out["memory"]})
        if isinstance(guest.get("network"), dict):
            taps = {n.hwaddr: n.host_name for n in _nics(data)}
            for iface in guest["network"].values():
                if taps.get(iface.get("hwaddr")):
                    iface["host_name"] = taps[iface["hwaddr"]]
            out["network"] = guest["network"]

    def state_many(self, names: list[str]) -> dict[str, dict]:
        """As ``state``, each guest's agent given at most LIST_AGENT_TIMEOUT (so ``lxc
        list`` shows VM addresses, and a hung agent cannot stall the list)."""
        out = {}
        for n in names:
            try:
                out[n] = self._state(self._domain(n), self._load(n), LIST_AGENT_TIMEOUT)
            except NotFound:
                continue
        return out

    def list_host(self) -> dict[str, str]:
        out = {}
        for dom in self.conn.listAllDomains(0):
            try:
                vmdir = qemu_xml.metadata_vmdir(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except libvirt.libvirtError:
                continue  # undefined while we listed
            if vmdir and Path(vmdir).parent == self.vmpath:
                out[dom.name()] = self._status(dom)[0]
        return out

    # ---- limits -----------------------------------------------------------------------

    def apply_limits_live(self, name: str, changed_config: dict[str, str]) -> None:
        """``limits.cpu`` by vCPU hotplug, ``limits.memory`` by balloon within the maximum.

        All-or-nothing: what a running VM cannot take (more memory than it started with,
        fewer vCPUs, CPU pinning) raises BadRequest and nothing is stored; stop the VM and
        set it then. Other ``limits.*`` keys are stored and apply at next start.
        """
        data = self._load(name)
        new = {k: v for k, v in {**data["config"], **changed_config}.items() if v != ""}
        limits.validate_limits(new)
        dom = self._domain(name)
        if dom.isActive():
            done = _apply_live(dom, name, data["config"], new, changed_config)
        else:
            done = []
        data["config"] = new
        try:
            self._save(name, data)
            self.conn.defineXML(self._render(name, data))
        except BaseException:
            for undo in reversed(done):
                undo()
            raise

    # ---- console ----------------------------------------------------------------------

    def log_dir(self, name: str) -> Path:
        self._load(name)
        return self._dir(name)

    def console_open(self, name: str) -> int:
        """A raw read/write fd on the serial console's pty; the caller closes it."""
        dom = self._domain(name)
        if not dom.isActive():
            raise Conflict(f"Instance {name!r} is stopped; start it to attach its console")
        path = qemu_xml.pty_path(dom.XMLDesc(0))
        if not path:
            raise Internal(f"Instance {name!r} has no serial pty in its live definition")
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            tty.setraw(fd, termios.TCSANOW)
        except termios.error:
            pass
        return fd

    # ---- exec and files: through the in-guest agent ------------------------------------

    def _agent(self, name: str, running: bool = False) -> qemu_agent.AgentLink:
        """The link to a running guest's agent, Unavailable (503) at once when it is down.

        From the event watch when it knows the port open (``running``: the caller checks
        the run state beside; else the watch must know it running too); otherwise the
        live XML, whose answer the watch keeps until the port's next event."""
        data = self._load(name)
        w = self._watch()
        gen = 0
        if w is not None:
            if w.port_open(name) and (running or w.state(name) == libvirt.VIR_DOMAIN_RUNNING):
                return qemu_agent.AgentLink(name, data["agent_socket"])
            gen = w.generation(name)
        if w is not None:
            dom = self._exec_doms.get(name) or self._domain(name)
            try:
                state, connected = _run_and_port(dom, running)
            except libvirt.libvirtError:  # undefined since: look it up again
                self._exec_doms.pop(name, None)
                dom = self._domain(name)
                state, connected = _run_and_port(dom, running)
            self._exec_doms[name] = dom
            w.seed(name, gen, state=state, port=connected)
            if connected and (running or state == libvirt.VIR_DOMAIN_RUNNING):
                return qemu_agent.AgentLink(name, data["agent_socket"])
            return qemu_agent.AgentLink.for_domain(name, dom, data["agent_socket"])
        if running:  # the exec path: the domain handle of the last exec saves a lookup
            dom = self._exec_doms.get(name)
            if dom is not None:
                try:
                    return qemu_agent.AgentLink.for_domain(name, dom, data["agent_socket"],
                                                           running)
                except libvirt.libvirtError:  # undefined since: look it up again
                    self._exec_doms.pop(name, None)
        dom = self._domain(name)
        if running:
            self._exec_doms[name] = dom
        return qemu_agent.AgentLink.for_domain(name, dom, data["agent_socket"], running)

    def exec_ready(self, name: str) -> None:
        """503 "VM agent isn't currently running" at once unless the guest's agent is up.

        Called by the exec endpoint right after it saw the instance Running, so only the
        agent's channel is checked. The link is kept for the ``exec_start`` that follows
        within milliseconds: checking libvirt again there cost three more round trips to
        libvirtd per exec."""
        self._ready_links[name] = (time.monotonic(), self._agent(name, running=True))

    def exec_start(self, name: str, command: list[str], env: dict[str, str] | None = None,
                   cwd: str | None = None, uid: int = 0, gid: int = 0,
                   interactive: bool = False, width: int = 80,
                   height: int = 24) -> ExecProcess:
        check_command(command)
        checked, link = self._ready_links.pop(name, (0.0, None))
        if link is None or time.monotonic() - checked > READY_FOR:
            link = self._agent(name)
        return link.exec_start(command, env or {}, cwd, uid, gid, interactive, width, height)

    def file_get(self, name: str, path: str) -> tuple[bytes | list[str], int, int, int, str]:
        return self._agent(name).file_get(path)

    def file_put(self, name: str, path: str, data: bytes, uid: int = 0, gid: int = 0,
                 mode: int | None = None, type: str = "file",
                 write: str = "overwrite", modify: frozenset[str] = frozenset()) -> None:
        self._agent(name).file_put(path, data, uid, gid, mode, type, write, modify)

    def file_delete(self, name: str, path: str) -> None:
        self._agent(name).file_delete(path)


# ---- helpers ------------------------------------------------------------------------


READY_FOR = 2.0  # s: an agent link exec_ready checked is trusted this long by exec_start
DETACH_TIMEOUT = 45.0  # s: a TCG guest on a busy host is slow to take an ACPI eject


def _run_and_port(dom: libvirt.virDomain, running: bool) -> tuple[int | None, bool]:
    """(run state unless the caller saw it running, whether the agent port is open)."""
    state = None if running else dom.state()[0]
    return state, qemu_xml.channel_state(dom.XMLDesc(0)) == "connected"


def _set_disks(data: dict, disks: list[DiskMount]) -> None:
    """Store the extra disks, each keeping the guest target it had (vdb, vdc...): a
    running guest's /dev names must not move when another disk comes or goes."""
    old = data.get("disk_targets", {})
    used = {t for n, t in old.items() if any(d.name == n for d in disks)}
    targets = {}
    for d in disks:
        t = old.get(d.name)
        if t is None:
            t = next(f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in used)
            used.add(t)
        targets[d.name] = t
    data["disks"] = [d.model_dump() for d in disks]
    data["disk_targets"] = targets


def _disks_with_targets(data: dict) -> list[tuple[DiskMount, str]]:
    targets = data.get("disk_targets", {})
    return [(m, targets.get(m.name, "vdz")) for m in
            (DiskMount.model_validate(d) for d in data.get("disks", []))]


def _check_nic(nic: Nic) -> Nic:
    """VMs take bridged NICs (a tap on the bridge) only, so far."""
    if nic.nictype != "bridged" or not (nic.bridge or nic.parent):
        raise BadRequest(f"NIC {nic.name!r}: virtual machines support bridged NICs only "
                         "(network=<bridge> or nictype=bridged)")
    if len(nic.host_name) > 15:
        raise BadRequest(f"Invalid NIC host_name {nic.host_name!r}: at most 15 characters")
    return nic


def _nics(data: dict) -> list[Nic]:
    """The stored NICs (older spec files kept ``mtu`` as "" when unset)."""
    return [Nic.model_validate({**n, "mtu": n.get("mtu") or None}) for n in data["nics"]]


def _root_size(devices: dict[str, dict[str, str]]) -> int:
    for dev in devices.values():
        if dev.get("type") == "disk" and dev.get("path") == "/" and dev.get("size"):
            return limits.parse_bytes("size", dev["size"])
    return 0


def _grow(disk: Path, size: int) -> None:
    """Grow (never shrink) the overlay's virtual size; the guest grows its fs itself."""
    info = json.loads(qemu_host.qemu_img("info", "--output=json", "-U", str(disk)))
    if size < info["virtual-size"]:
        raise BadRequest(f"Root disk size {size} is smaller than its current "
                         f"{info['virtual-size']} bytes; disks can only grow")
    if size > info["virtual-size"]:
        qemu_host.qemu_img("resize", "-q", str(disk), str(size))


def _socket_path(vmdir: Path) -> str:
    """``vmdir/agent.sock``, or a short path under /run when that exceeds sun_path."""
    path = str(vmdir / "agent.sock")
    if len(path.encode()) < 108:
        return path
    import hashlib
    Path("/run/corral").mkdir(parents=True, exist_ok=True)
    return f"/run/corral/vm-{hashlib.sha1(path.encode()).hexdigest()[:16]}.sock"


def _boot_files(root: Path) -> tuple[str, str, str]:
    """Direct kernel boot when the volume ships a kernel (``vmlinuz``/``initrd.img``,
    optional ``cmdline``); otherwise "" and the guest boots from its disk via SeaBIOS."""
    for d in (root / "boot", root):  # build_vm.py's layout first: boot/{vmlinuz,...}
        kernel = next((d / n for n in ("vmlinuz", "kernel") if (d / n).is_file()), None)
        if kernel is not None:
            break
    else:
        return "", "", ""
    initrd = next((d / n for n in ("initrd.img", "initrd") if (d / n).is_file()), None)
    cmd = d / "cmdline"
    cmdline = cmd.read_text().strip() if cmd.is_file() else DEFAULT_CMDLINE
    return str(kernel), str(initrd or ""), cmdline


def _wait_inactive(dom: libvirt.virDomain, timeout: float) -> bool:
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            if not dom.isActive():
                return True
        except libvirt.libvirtError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _apply_live(dom: libvirt.virDomain, name: str, old: dict[str, str],
                new: dict[str, str], changed: dict[str, str]) -> list:
    """Apply cpu/memory live; returns undo callables for what was applied."""
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    done: list = []
    try:
        if "limits.cpu" in changed:
            value = new.get("limits.cpu", "1")
            if "-" in value or "," in value:
                raise BadRequest("CPU pinning (limits.cpu as a set) applies at VM start "
                                 "only; stop the VM, set it, start it again")
            want, have = int(value), dom.vcpusFlags(live)
            top = dom.vcpusFlags(live | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
            if want > top:
                raise BadRequest(f"limits.cpu={want} exceeds the {top} vCPUs {name!r} was "
                                 "started with room for; set it while the VM is stopped")
            if want < have:
                raise BadRequest(f"Cannot unplug vCPUs from running VM {name!r} "
                                 f"({have} -> {want}); set it while the VM is stopped")
            if want != have:
                dom.setVcpusFlags(want, live)
                done.append(lambda: None)  # hotplugged vCPUs cannot be taken back live
        if "limits.memory" in changed:
            kib = limits.parse_bytes("limits.memory",
                                     new.get("limits.memory", f"{DEFAULT_MEMORY}")) // 1024
            top = dom.maxMemory()
            if kib > top:
                raise BadRequest(f"limits.memory={kib} KiB exceeds the {top} KiB {name!r} "
                                 "was started with; a larger maximum applies at next start: "
                                 "stop the VM, set it, start it again")
            cur = dom.info()[2]
            dom.setMemoryFlags(kib, live)
            done.append(lambda: dom.setMemoryFlags(cur, live))
    except libvirt.libvirtError as e:
        for undo in reversed(done):
            undo()
        raise Conflict(f"Failed to apply limits live on {name!r}: {e.get_error_message()}; "
                       "no limit was changed") from None
    except BaseException:
        for undo in reversed(done):
            undo()
        raise
    return done


def _tap_counters(nics: list[dict]) -> dict:
    """Host-side tap counters, swapped to the guest's view (tap rx = guest tx)."""
    out = {}
    for nic in nics:
        tap = nic.get("host_name")
        if not tap:
            continue
        base = Path("/sys/class/net") / tap
        try:
            st = {f: int((base / "statistics" / f).read_text()) for f in
                  ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
            mtu = int((base / "mtu").read_text())
            oper = (base / "operstate").read_text().strip()
        except (OSError, ValueError):
            continue
        out[nic.get("name", "eth0")] = {
            "addresses": [], "hwaddr": nic.get("hwaddr", ""), "host_name": tap, "mtu": mtu,
            "state": "up" if oper in ("up", "unknown") else "down", "type": "broadcast",
            "counters": {"bytes_received": st["tx_bytes"], "bytes_sent": st["rx_bytes"],
                         "packets_received": st["tx_packets"],
                         "packets_sent": st["rx_packets"]}}
    return out


def _qemu_log_tail(name: str, lines: int = 8) -> str:
    try:
        text = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n" + "\n".join(text.splitlines()[-lines:])
