"""The hardware of this node in LXD's ``GET /1.0/resources`` shape (resources API v2).

Why a pure reader of sysfs and procfs under a ``root`` directory: the answer is the host's
own facts (CPU topology, memory, disks, NICs, PCI, DMI), which the kernel already exposes
as files; reading them needs no helper process or library, and unit tests point ``root`` at
a fake tree. Anything the kernel does not expose here (DMI inside some VMs, cpufreq, NUMA
on a small host) is left empty or zero, as LXD does, never guessed.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

SECTOR = 512  # /sys/class/block/*/size counts 512-byte sectors whatever the disk's own size
# Block devices that are not disks of this machine (LXD skips them too).
VIRTUAL_BLOCK = re.compile(r"^(loop|ram|zram|dm-|nbd|md|sr)\d*")
PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]")


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return default


def _int(path: Path, default: int = 0) -> int:
    try:
        return int(_read(path), 0)
    except ValueError:
        return default


def _ids(text: str) -> list[int]:
    """A kernel CPU list (``0-3,8,10-11``) as numbers."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _link_name(path: Path) -> str:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _hex_id(path: Path) -> str:
    """``0x8086`` (sysfs) -> ``8086`` (LXD)."""
    return _read(path).removeprefix("0x")


def _numa(device: Path) -> int:
    return max(0, _int(device / "numa_node", 0))


# -- CPU -----------------------------------------------------------------------------------

def _cpuinfo(root: Path) -> dict[int, dict[str, str]]:
    """``/proc/cpuinfo`` blocks by processor number (vendor, model name, MHz)."""
    out: dict[int, dict[str, str]] = {}
    for block in _read(root / "proc/cpuinfo").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip()] = v.strip()
        if fields.get("processor", "").isdigit():
            out[int(fields["processor"])] = fields
    return out


def _cache(cpu: Path) -> list[dict[str, Any]]:
    out = []
    for index in sorted((cpu / "cache").glob("index*")):
        size = _read(index / "size")
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if not m:
            continue
        mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        out.append({"level": _int(index / "level"), "type": _read(index / "type"),
                    "size": int(m.group(1)) * mult})
    return out


def _mhz(cpu: Path, name: str) -> int:
    return _int(cpu / "cpufreq" / name) // 1000  # kHz -> MHz


def cpu(root: Path) -> dict[str, Any]:
    base = root / "sys/devices/system/cpu"
    info = _cpuinfo(root)
    isolated = set(_ids(_read(base / "isolated")))
    sockets: dict[int, dict[str, Any]] = {}
    cores: dict[tuple[int, int, int], dict[str, Any]] = {}
    total = 0
    cpus = sorted((p for p in base.glob("cpu[0-9]*") if p.name[3:].isdigit()),
                  key=lambda p: int(p.name[3:]))
    for path in cpus:
        n = int(path.name[3:])
        topo = path / "topology"
        online = _read(path / "online", "1") == "1"
        socket_id = max(0, _int(topo / "physical_package_id", 0))
        die = max(0, _int(topo / "die_id", 0))
        core_id = _int(topo / "core_id", n)
        siblings = _ids(_read(topo / "thread_siblings_list")) or [n]
        node = next((int(p.name[4:]) for p in path.glob("node[0-9]*")), 0)
        fields = info.get(n, {})
        sock = sockets.setdefault(socket_id, {
            "name": fields.get("model name", ""), "vendor": fields.get("vendor_id", ""),
            "socket": socket_id, "cache": _cache(path), "cores": [],
            "frequency": _mhz(path, "scaling_cur_freq") or int(float(fields.get("cpu MHz", 0))),
            "frequency_minimum": _mhz(path, "cpuinfo_min_freq"),
            "frequency_turbo": _mhz(path, "cpuinfo_max_freq")})
        core = cores.get((socket_id, die, core_id))
        if core is None:
            core = cores[(socket_id, die, core_id)] = {
                "core": core_id, "die": die, "threads": [],
                "frequency": _mhz(path, "scaling_cur_freq")}
            sock["cores"].append(core)
        core["threads"].append({"id": n, "numa_node": node,
                                "thread": siblings.index(n) if n in siblings else 0,
                                "online": online, "isolated": n in isolated})
        total += 1
    for sock in sockets.values():  # LXD omits empty optional fields
        for k in ("name", "vendor", "cache", "frequency", "frequency_minimum",
                  "frequency_turbo"):
            if not sock[k]:
                del sock[k]
        for core in sock["cores"]:
            if not core["frequency"]:
                del core["frequency"]
    return {"architecture": platform.machine(),
            "sockets": [sockets[k] for k in sorted(sockets)], "total": total}


# -- memory --------------------------------------------------------------------------------

def _meminfo(text: str) -> dict[str, int]:
    """``Key: N kB`` lines (also NUMA nodes' ``Node 0 Key: N kB``) in bytes; page counts
    (``HugePages_Total``) as they are."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(?:Node \d+ )?([\w()]+):\s+(\d+)(\s*kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def memory(root: Path) -> dict[str, Any]:
    mem = _meminfo(_read(root / "proc/meminfo"))
    page = mem.get("Hugepagesize", 0)
    total = mem.get("MemTotal", 0)
    free = mem.get("MemAvailable", mem.get("MemFree", 0))
    out: dict[str, Any] = {
        "hugepages_total": mem.get("HugePages_Total", 0) * page,
        "hugepages_used": (mem.get("HugePages_Total", 0) - mem.get("HugePages_Free", 0)) * page,
        "hugepages_size": page, "used": max(0, total - free), "total": total}
    nodes = []
    for path in sorted((root / "sys/devices/system/node").glob("node[0-9]*"),
                       key=lambda p: int(p.name[4:])):
        nm = _meminfo(_read(path / "meminfo"))
        hp_total = mp_free = 0
        for hp in (path / "hugepages").glob("hugepages-*kB"):
            size = int(hp.name[10:-2]) * 1024
            hp_total += _int(hp / "nr_hugepages") * size
            mp_free += _int(hp / "free_hugepages") * size
        nodes.append({"numa_node": int(path.name[4:]), "hugepages_used": hp_total - mp_free,
                      "hugepages_total": hp_total,
                      "used": nm.get("MemUsed", nm.get("MemTotal", 0) - nm.get("MemFree", 0)),
                      "total": nm.get("MemTotal", 0)})
    if nodes:
        out["nodes"] = nodes
    return out


# -- storage -------------------------------------------------------------------------------

def _disk_type(dev: Path, name: str) -> str:
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("vd"):
        return "virtio"
    subsystem = _link_name(dev / "device" / "subsystem")
    if subsystem == "scsi":
        return "scsi"
    return subsystem or ""


def storage(root: Path) -> dict[str, Any]:
    disks = []
    for dev in sorted((root / "sys/class/block").iterdir()) \
            if (root / "sys/class/block").is_dir() else []:
        name = dev.name
        if (dev / "partition").exists() or VIRTUAL_BLOCK.match(name):
            continue
        parts = []
        for part in sorted(p for p in dev.iterdir() if (p / "partition").exists()):
            parts.append({"id": part.name, "device": _read(part / "dev"),
                          "read_only": _read(part / "ro") == "1",
                          "size": _int(part / "size") * SECTOR,
                          "partition": _int(part / "partition")})
        disk: dict[str, Any] = {
            "id": name, "device": _read(dev / "dev"), "model": _read(dev / "device/model"),
            "type": _disk_type(dev, name), "read_only": _read(dev / "ro") == "1",
            "size": _int(dev / "size") * SECTOR, "removable": _read(dev / "removable") == "1",
            "wwn": _read(dev / "wwid") or _read(dev / "device/wwid"),
            "numa_node": _numa(dev / "device"),
            "block_size": _int(dev / "queue/logical_block_size"),
            "firmware_version": _read(dev / "device/rev") or _read(dev / "device/firmware_rev"),
            "rpm": 0, "serial": _read(dev / "serial") or _read(dev / "device/serial"),
            "device_id": "", "partitions": parts}
        disks.append({k: v for k, v in disk.items() if v != "" or k in ("id", "device_id")})
    return {"disks": disks, "total": len(disks) + sum(len(d["partitions"]) for d in disks)}


# -- network and PCI -------------------------------------------------------------------------

def _pci_device(path: Path) -> dict[str, Any]:
    return {"driver": _link_name(path / "driver"),
            "driver_version": _read(path / "driver/module/version"),
            "numa_node": _numa(path), "pci_address": path.name,
            "vendor": "", "vendor_id": _hex_id(path / "vendor"),
            "product": "", "product_id": _hex_id(path / "device"),
            "iommu_group": max(0, int(_link_name(path / "iommu_group") or 0)),
            "vpd": {}}


def pci(root: Path) -> dict[str, Any]:
    base = root / "sys/bus/pci/devices"
    devices = [_pci_device(p) for p in sorted(base.iterdir())] if base.is_dir() else []
    return {"devices": devices, "total": len(devices)}


def network(root: Path) -> dict[str, Any]:
    """Physical NICs (those with a ``device``), their interfaces grouped as ports by the
    device they belong to (a card with two ports is one card)."""
    cards: dict[str, dict[str, Any]] = {}
    base = root / "sys/class/net"
    for iface in sorted(base.iterdir()) if base.is_dir() else []:
        dev = iface / "device"
        if not dev.exists():
            continue  # bridges, veths, loopback: not hardware
        real = Path(os.path.realpath(dev))
        # A virtio NIC's device is virtioN; the PCI function is its parent.
        hw = real if PCI_ADDRESS.fullmatch(real.name) else real.parent
        address = real.name if hw is real or not PCI_ADDRESS.fullmatch(hw.name) else hw.name
        card = cards.get(address)
        if card is None:
            is_pci = PCI_ADDRESS.fullmatch(address)
            ids = hw if is_pci else real
            card = cards[address] = {
                "driver": _link_name(dev / "driver"),
                "driver_version": _read(dev / "driver/module/version"),
                "ports": [], "numa_node": _numa(ids),
                "pci_address": address if is_pci else "",
                "vendor_id": _hex_id(ids / "vendor"), "product_id": _hex_id(ids / "device")}
        speed = _int(iface / "speed", -1)
        port = {"id": iface.name, "address": _read(iface / "address"),
                "port": _int(iface / "dev_port", 0),
                "protocol": "ethernet" if _read(iface / "type") == "1" else "infiniband",
                "auto_negotiation": False,
                "link_detected": _read(iface / "carrier") == "1"}
        if speed > 0:
            port["link_speed"] = speed
        duplex = _read(iface / "duplex")
        if duplex and duplex != "unknown":
            port["link_duplex"] = duplex
        card["ports"].append(port)
    out = [{k: v for k, v in c.items() if v != "" or k == "driver"} for c in cards.values()]
    return {"cards": out, "total": len(out)}


def usb(root: Path) -> dict[str, Any]:
    devices = []
    base = root / "sys/bus/usb/devices"
    for dev in sorted(base.iterdir()) if base.is_dir() else []:
        if not (dev / "idVendor").exists():
            continue  # interfaces, not devices
        devices.append({"bus_address": _int(dev / "busnum"),
                        "device_address": _int(dev / "devnum"), "interfaces": [],
                        "vendor": _read(dev / "manufacturer"),
                        "vendor_id": _read(dev / "idVendor"),
                        "product": _read(dev / "product"),
                        "product_id": _read(dev / "idProduct"),
                        "speed": float(_read(dev / "speed") or 0)})
    return {"devices": devices, "total": len(devices)}


# -- system --------------------------------------------------------------------------------

def system_type(root: Path) -> str:
    """``container``, ``virtual-machine`` or ``physical`` (LXD's values), from facts the
    kernel shows: a container manager's marker, the CPU's hypervisor flag."""
    environ = _read(root / "proc/1/environ")
    if (root / "run/.containerenv").exists() or (root / ".dockerenv").exists() \
            or "container=" in environ:
        return "container"
    flags = next((b.get("flags", "") for b in _cpuinfo(root).values()), "")
    if "hypervisor" in flags.split():
        return "virtual-machine"
    return "physical" if flags else "unknown"


def system(root: Path) -> dict[str, Any]:
    dmi = root / "sys/class/dmi/id"

    def d(name: str) -> str:
        return _read(dmi / name)

    return {"uuid": d("product_uuid"), "vendor": d("sys_vendor"), "product": d("product_name"),
            "family": d("product_family"), "version": d("product_version"),
            "sku": d("product_sku"), "serial": d("product_serial"),
            "type": system_type(root),
            "firmware": {"vendor": d("bios_vendor"), "date": d("bios_date"),
                         "version": d("bios_version")},
            "chassis": {"vendor": d("chassis_vendor"), "type": d("chassis_type"),
                        "serial": d("chassis_serial"), "version": d("chassis_version")},
            "motherboard": {"vendor": d("board_vendor"), "product": d("board_name"),
                            "serial": d("board_serial"), "version": d("board_version")}}


def read(root: Path = Path("/")) -> dict[str, Any]:
    """Everything ``GET /1.0/resources`` shows. GPUs are not looked for (none can be
    passed to an instance yet): an empty list, as LXD answers on a host without one."""
    return {"cpu": cpu(root), "memory": memory(root), "gpu": {"cards": [], "total": 0},
            "network": network(root), "storage": storage(root), "usb": usb(root),
            "pci": pci(root), "system": system(root)}


# The parts of LXD's resources API this answer fills (``lxc info --resources`` needs v2).
API_EXTENSIONS = ["resources", "resources_v2", "resources_usb_pci", "resources_system",
                  "resources_cpu_core_die", "resource_cpu_isolated"]
