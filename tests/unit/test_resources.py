"""services/instance/resources.py on a fake sysfs/procfs tree: LXD's resources v2 shape."""

from __future__ import annotations

import os
from pathlib import Path

from services.instance import resources

CPUINFO = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Fake CPU
cpu MHz\t\t: 2100.000
flags\t\t: fpu vme hypervisor
"""

MEMINFO = """MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    6000000 kB
HugePages_Total:       4
HugePages_Free:        1
Hugepagesize:       2048 kB
"""


def w(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def fake_host(root: Path) -> Path:
    cpu = root / "sys/devices/system/cpu"
    w(cpu / "isolated", "3")
    # one socket, two cores, two threads each; cpu3 offline
    for n, (core, siblings) in enumerate([(0, "0,2"), (1, "1,3"), (0, "0,2"), (1, "1,3")]):
        d = cpu / f"cpu{n}"
        w(d / "topology/physical_package_id", "0")
        w(d / "topology/die_id", "0")
        w(d / "topology/core_id", str(core))
        w(d / "topology/thread_siblings_list", siblings)
        if n:
            w(d / "online", "0" if n == 3 else "1")
        (d / "node0").mkdir(parents=True)
        w(d / "cache/index0/level", "1")
        w(d / "cache/index0/type", "Data")
        w(d / "cache/index0/size", "32K")
        w(d / "cpufreq/scaling_cur_freq", "2100000")
        w(d / "cpufreq/cpuinfo_max_freq", "3500000")
    w(root / "proc/cpuinfo", "\n".join(CPUINFO.format(n=n) for n in range(4)))
    w(root / "proc/meminfo", MEMINFO)
    w(root / "sys/devices/system/node/node0/meminfo",
      "Node 0 MemTotal:       8000000 kB\nNode 0 MemFree:        1000000 kB\n"
      "Node 0 MemUsed:        7000000 kB")
    # disks: sda (two partitions), a loop device that is not a disk
    blk = root / "sys/class/block"
    w(blk / "sda/dev", "8:0")
    w(blk / "sda/size", "2097152")  # 1 GiB in sectors
    w(blk / "sda/ro", "0")
    w(blk / "sda/removable", "1")
    w(blk / "sda/device/model", "FAKE DISK")
    w(blk / "sda/queue/logical_block_size", "4096")
    for i in (1, 2):
        w(blk / f"sda/sda{i}/partition", str(i))
        w(blk / f"sda/sda{i}/dev", f"8:{i}")
        w(blk / f"sda/sda{i}/size", "1024")
        w(blk / f"sda/sda{i}/ro", "0")
        os.symlink(f"sda/sda{i}", blk / f"sda{i}")  # as sysfs lists partitions too
    w(blk / "loop0/dev", "7:0")
    # PCI: a NIC with eth0, a virtio NIC (eth1) whose device is virtio0 under its PCI function
    pci = root / "sys/bus/pci/devices"
    for addr, dev in (("0000:00:03.0", "0x10d3"), ("0000:00:04.0", "0x1041")):
        w(pci / addr / "vendor", "0x8086" if addr.endswith("3.0") else "0x1af4")
        w(pci / addr / "device", dev)
        w(pci / addr / "numa_node", "-1")
    drivers = root / "sys/bus/pci/drivers"
    (drivers / "e1000e").mkdir(parents=True)
    os.symlink(drivers / "e1000e", pci / "0000:00:03.0/driver")
    (pci / "0000:00:04.0/virtio0").mkdir()
    (drivers / "virtio_net").mkdir()
    os.symlink(drivers / "virtio_net", pci / "0000:00:04.0/virtio0/driver")
    net = root / "sys/class/net"
    for iface, dev in (("eth0", pci / "0000:00:03.0"), ("eth1", pci / "0000:00:04.0/virtio0")):
        w(net / iface / "address", "02:00:00:00:00:0" + iface[-1])
        w(net / iface / "type", "1")
        w(net / iface / "carrier", "1")
        w(net / iface / "speed", "1000" if iface == "eth0" else "-1")
        os.symlink(dev, net / iface / "device")
    w(net / "br0/address", "02:00:00:00:00:ff")  # a bridge: no device, not hardware
    w(root / "sys/class/dmi/id/sys_vendor", "FakeVendor")
    w(root / "sys/class/dmi/id/product_name", "Fake 1")
    return root


def test_cpu_sockets_cores_threads(tmp_path):
    cpu = resources.cpu(fake_host(tmp_path))
    assert cpu["total"] == 4
    [sock] = cpu["sockets"]
    assert sock["vendor"] == "GenuineIntel" and sock["name"].startswith("Intel(R) Xeon")
    assert sock["frequency"] == 2100 and sock["frequency_turbo"] == 3500
    assert sock["cache"] == [{"level": 1, "type": "Data", "size": 32768}]
    assert [c["core"] for c in sock["cores"]] == [0, 1]
    threads = {t["id"]: t for c in sock["cores"] for t in c["threads"]}
    assert threads[0]["thread"] == 0 and threads[2]["thread"] == 1
    assert threads[3]["online"] is False and threads[3]["isolated"] is True
    assert threads[1]["online"] is True and threads[1]["isolated"] is False


def test_memory_and_hugepages(tmp_path):
    mem = resources.memory(fake_host(tmp_path))
    assert mem["total"] == 8000000 * 1024
    assert mem["used"] == 2000000 * 1024  # total - available
    assert mem["hugepages_size"] == 2 << 20
    assert mem["hugepages_total"] == 4 * (2 << 20) and mem["hugepages_used"] == 3 * (2 << 20)
    assert mem["nodes"][0]["numa_node"] == 0 and mem["nodes"][0]["used"] == 7000000 * 1024


def test_disks_and_partitions_not_loop_devices(tmp_path):
    st = resources.storage(fake_host(tmp_path))
    assert [d["id"] for d in st["disks"]] == ["sda"]
    [sda] = st["disks"]
    assert sda["size"] == 1 << 30 and sda["device"] == "8:0" and sda["removable"] is True
    assert sda["model"] == "FAKE DISK" and sda["block_size"] == 4096
    assert [(p["id"], p["partition"], p["size"]) for p in sda["partitions"]] == \
        [("sda1", 1, 1024 * 512), ("sda2", 2, 1024 * 512)]
    assert st["total"] == 3


def test_network_cards_are_hardware_only(tmp_path):
    net = resources.network(fake_host(tmp_path))
    assert net["total"] == 2
    by_addr = {c["pci_address"]: c for c in net["cards"]}
    e1000 = by_addr["0000:00:03.0"]
    assert e1000["driver"] == "e1000e" and e1000["vendor_id"] == "8086"
    assert e1000["ports"][0]["id"] == "eth0" and e1000["ports"][0]["link_speed"] == 1000
    virtio = by_addr["0000:00:04.0"]  # the PCI function, not virtio0
    assert virtio["driver"] == "virtio_net" and virtio["product_id"] == "1041"
    assert "link_speed" not in virtio["ports"][0]


def test_pci_system_and_whole_answer(tmp_path):
    out = resources.read(fake_host(tmp_path))
    assert set(out) == {"cpu", "memory", "gpu", "network", "storage", "usb", "pci", "system"}
    assert out["pci"]["total"] == 2
    assert out["pci"]["devices"][0]["driver"] == "e1000e"
    assert out["pci"]["devices"][1]["numa_node"] == 0  # -1 (no NUMA) reads as node 0
    assert out["system"]["vendor"] == "FakeVendor" and out["system"]["product"] == "Fake 1"
    assert out["system"]["type"] == "virtual-machine"  # the hypervisor CPU flag
    assert out["gpu"] == {"cards": [], "total": 0} and out["usb"]["total"] == 0


def test_an_empty_tree_gives_an_empty_but_whole_answer(tmp_path):
    out = resources.read(tmp_path)
    assert out["cpu"]["total"] == 0 and out["memory"]["total"] == 0
    assert out["storage"] == {"disks": [], "total": 0} and out["network"]["total"] == 0
    assert out["system"]["firmware"] == {"vendor": "", "date": "", "version": ""}
