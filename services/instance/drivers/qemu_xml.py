"""Render a VM's libvirt domain XML from Corral's inputs (a pure function, unit-testable).

Why these devices: a virtio disk (qcow2 overlay), virtio NICs as taps on Linux bridges
with the host-side name we were given (so network state and firewalling can find them),
the serial port to a pty *and* a log file (console attach + ``console_log``), a
virtio-serial unix channel ``org.corral.agent`` for the in-guest agent, and a virtio
balloon with stats so memory can shrink live and be reported. vCPUs are defined as
``<vcpu current=N>MAX</vcpu>`` so ``limits.cpu`` can grow live by hotplug. No memory
``hard_limit``: it needs memlock, which fails here. No graphics: console only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from shared.messages.network import Nic

from .disk_mounts import DiskMount

NS = "https://corral.dev/xmlns/instance/1"
AGENT_CHANNEL = "org.corral.agent"
ET.register_namespace("corral", NS)


@dataclass
class DomainSpec:
    name: str
    uuid: str
    vmdir: str
    disk: str
    memory_kib: int
    max_memory_kib: int
    vcpus: int
    max_vcpus: int
    console_log: str
    agent_socket: str
    domain_type: str = "qemu"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    cpuset: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    nics: list[Nic] = field(default_factory=list)
    # Extra disks (block custom volumes, host files) with their guest target (vdb...).
    disks: list[tuple[DiskMount, str]] = field(default_factory=list)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def render(s: DomainSpec) -> str:
    dom = ET.Element("domain", type=s.domain_type)
    _sub(dom, "name", s.name)
    _sub(dom, "uuid", s.uuid)
    meta = _sub(dom, "metadata")
    _sub(meta, f"{{{NS}}}instance", name=s.name, vmdir=s.vmdir)
    _sub(dom, "memory", str(s.max_memory_kib), unit="KiB")
    _sub(dom, "currentMemory", str(s.memory_kib), unit="KiB")
    vcpu = _sub(dom, "vcpu", str(s.max_vcpus), placement="static", current=str(s.vcpus))
    if s.cpuset:
        vcpu.set("cpuset", s.cpuset)
    if s.domain_type == "kvm":  # the CPU the KVM probe checked (qemu_host._probe_kvm)
        _sub(dom, "cpu", mode="host-passthrough")
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if s.kernel:
        _sub(os_, "kernel", s.kernel)
        if s.initrd:
            _sub(os_, "initrd", s.initrd)
        _sub(os_, "cmdline", s.cmdline)
    else:
        _sub(os_, "boot", dev="hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devs = _sub(dom, "devices")
    _sub(devs, "emulator", s.emulator)
    disk = _sub(devs, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=s.disk)
    _sub(disk, "target", dev="vda", bus="virtio")
    _pci_slot(disk, 0)
    for extra, target in s.disks:
        devs.append(extra_disk(extra, target))
    for i, nic in enumerate(s.nics):
        iface = interface(nic)
        if 3 + i < len(ONE_LINK_SLOTS):
            _pci_slot(iface, 3 + i)
        devs.append(iface)
    serial = _sub(devs, "serial", type="pty")
    _sub(serial, "log", file=s.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devs, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _pci_slot(_sub(devs, "controller", type="virtio-serial", index="0"), 1)
    chan = _sub(devs, "channel", type="unix")
    _sub(chan, "source", mode="bind", path=s.agent_socket)
    _sub(chan, "target", type="virtio", name=AGENT_CHANNEL)
    balloon = _sub(devs, "memballoon", model="virtio")
    _sub(balloon, "stats", period="2")
    _pci_slot(balloon, 2)
    return ET.tostring(dom, encoding="unicode")


# PCI slots whose INTA the i440FX routes to one ACPI link (LNKB: link = (slot - 1 + pin)
# mod 4). Why: the guest's first use of each link runs its ACPI methods (_PRS/_CRS/_SRS)
# in emulated AML, ~0.19 s a link under TCG when virtio_pci enables the device; libvirt's
# own slots (2, 3, 4...) spread the cold devices over three links. The root disk takes
# slot 2, the lowest a device can have, so the guest still probes it first (its /dev/vda)
# whatever extra disks libvirt places. Hotplugged devices keep libvirt's free slots.
ONE_LINK_SLOTS = (0x02, 0x06, 0x0A, 0x0E, 0x12, 0x16, 0x1A, 0x1E)


def _pci_slot(el: ET.Element, i: int) -> None:
    _sub(el, "address", type="pci", domain="0x0000", bus="0x00",
         slot=f"0x{ONE_LINK_SLOTS[i]:02x}", function="0x0")


def disk_alias(name: str) -> str:
    """libvirt's user alias of an extra disk (``ua-`` + [A-Za-z0-9_-]): how a hot-plugged
    disk is found again to detach it, whatever its device name."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return f"ua-disk-{safe}-{sum(name.encode()) % 4096:03x}"


def extra_disk(m: DiskMount, target: str) -> ET.Element:
    """A virtio-blk ``<disk>`` for a block custom volume or a host file (raw), with the
    device name as its serial (the guest sees /dev/disk/by-id/virtio-<name>) and LXD's
    ``limits.*`` as ``<iotune>``."""
    block = m.source.startswith("/dev/")
    disk = ET.Element("disk", type="block" if block else "file", device="disk")
    _sub(disk, "driver", name="qemu", type="raw", discard="unmap")
    _sub(disk, "source", **{"dev" if block else "file": m.source})
    _sub(disk, "target", dev=target, bus="virtio")
    _sub(disk, "serial", m.name[:20])
    if m.readonly:
        _sub(disk, "readonly")
    tune = {"read_bytes_sec": m.read_bps, "write_bytes_sec": m.write_bps,
            "read_iops_sec": m.read_iops, "write_iops_sec": m.write_iops}
    if any(tune.values()):
        io = _sub(disk, "iotune")
        for k, v in tune.items():
            if v:
                _sub(io, k, str(v))
    _sub(disk, "alias", name=disk_alias(m.name))
    return disk


def interface(nic: Nic) -> ET.Element:
    """A neutral NIC as libvirt's ``<interface type='bridge'>``: a tap named ``host_name``
    on ``bridge`` (the only kind VMs take so far; the driver refuses the others)."""
    iface = ET.Element("interface", type="bridge")
    if nic.hwaddr:
        _sub(iface, "mac", address=nic.hwaddr)
    _sub(iface, "source", bridge=nic.bridge or nic.parent)
    if nic.host_name:
        _sub(iface, "target", dev=nic.host_name)
    _sub(iface, "model", type="virtio")
    if nic.mtu:
        _sub(iface, "mtu", size=str(nic.mtu))
    _sub(iface, "rom", enabled="no")  # no iPXE: we never netboot
    return iface


def metadata_vmdir(xml: str) -> str | None:
    """The vmdir Corral stamped on a domain, or None when the domain is not ours."""
    el = ET.fromstring(xml).find(f"metadata/{{{NS}}}instance")
    return el.get("vmdir") if el is not None else None


def pty_path(xml: str) -> str | None:
    """The serial console's pty of a running domain (from its live XML)."""
    el = ET.fromstring(xml).find("devices/console[@type='pty']/source")
    return el.get("path") if el is not None else None


def channel_state(xml: str) -> str | None:
    """"connected"/"disconnected" of the agent channel as libvirt tracks it, if known."""
    for chan in ET.fromstring(xml).findall("devices/channel/target"):
        if chan.get("name") == AGENT_CHANNEL:
            return chan.get("state")
    return None
