"""Disk device rules that need no host (disks.check_device, paths, limits), the libvirt
form of an extra disk and the stable guest targets of a VM's disks (pure logic)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from services.instance import disk_rules as disks
from services.instance import validate
from services.instance.drivers import qemu_xml
from services.instance.drivers.disk_mounts import DiskMount
from shared.errors import BadRequest

ROOT = {"type": "disk", "path": "/", "pool": "p"}


@pytest.mark.parametrize("dev, words", [
    ({"type": "disk", "path": "/mnt"}, 'require the "source"'),
    ({"type": "disk", "source": "/srv", "path": "mnt"}, "must be absolute"),
    ({"type": "disk", "source": "srv", "path": "/mnt"}, "source path must be absolute"),
    ({"type": "disk", "source": "/srv", "path": "/a/../b"}, "'..'"),
    ({"type": "disk", "source": "/srv", "path": "//"}, "only the root disk"),
    ({"type": "disk", "pool": "p", "source": "/srv", "path": "/m"}, "absolute paths"),
    ({"type": "disk", "pool": "p", "source": "../x", "path": "/m"}, "custom volume name"),
    ({"type": "disk", "pool": "p", "source": "v", "path": "/m", "shift": "true"}, "shift"),
    ({"type": "disk", "source": "/srv", "path": "/m", "readonly": "maybe"}, "readonly"),
    ({"type": "disk", "source": "/srv", "path": "/m", "recursive": "true",
      "readonly": "true"}, "recursive read-only"),
    ({"type": "disk", "source": "/srv", "path": "/m", "limits.read": "fast"},
     "invalid limits.read"),
    ({"type": "disk", "source": "/srv", "path": "/m", "io.cache": "none"},
     "io.cache is not supported"),
    ({"type": "disk", "source": "/srv", "path": "/m", "required": "true",
      "optional": "true"}, "both"),
])
def test_bad_extra_disks_are_refused_with_the_reason(dev, words):
    with pytest.raises(BadRequest, match=words):
        validate.check_devices({"root": ROOT, "d": dev})


def test_good_extra_disks_pass():
    devs = {"root": ROOT,
            "a": {"type": "disk", "source": "/srv", "path": "/mnt/a", "readonly": "true",
                  "shift": "true", "limits.max": "10MB"},
            "b": {"type": "disk", "pool": "p", "source": "custom/vol", "path": "/mnt/b"},
            "c": {"type": "disk", "pool": "p", "source": "blockvol"}}
    assert validate.check_devices(devs) == devs


def test_two_disks_on_one_path_are_refused():
    with pytest.raises(BadRequest, match="same path"):
        validate.check_devices({"root": ROOT,
                                "a": {"type": "disk", "source": "/x", "path": "/mnt/"},
                                "b": {"type": "disk", "source": "/y", "path": "/mnt"}})


def test_limits_in_bytes_or_iops():
    assert disks.parse_limit("d", "limits.read", "10MB") == (10_000_000, 0)
    assert disks.parse_limit("d", "limits.read", "150iops") == (0, 150)
    rates = disks.rates("d", {"limits.max": "1MB", "limits.write": "20iops"})
    assert rates == {"read_bps": 1_000_000, "write_bps": 1_000_000, "read_iops": 0,
                     "write_iops": 20}


def test_changed_disks():
    a = {"root": ROOT, "x": {"type": "disk", "source": "/x", "path": "/x"},
         "y": {"type": "disk", "source": "/y", "path": "/y"}}
    b = {"root": ROOT, "x": {"type": "disk", "source": "/x", "path": "/x2"},
         "z": {"type": "disk", "source": "/z", "path": "/z"}}
    from services.instance.disks import changed

    assert changed(a, b) == ({"x", "y"}, {"x", "z"})


def test_libvirt_extra_disk():
    m = DiskMount(name="data", source="/p/custom/v/root.img", kind="block", readonly=True,
                  read_bps=1000)
    el = qemu_xml.extra_disk(m, "vdb")
    assert el.find("source").get("file") == "/p/custom/v/root.img"
    assert el.find("target").attrib == {"dev": "vdb", "bus": "virtio"}
    assert el.find("readonly") is not None
    assert el.find("iotune/read_bytes_sec").text == "1000"
    assert el.find("alias").get("name").startswith("ua-disk-data-")
    ET.tostring(el)


def test_vm_disk_targets_stay_put():
    from services.instance.drivers.qemu import _disks_with_targets, _set_disks

    a, b, c = (DiskMount(name=n, source=f"/{n}", kind="file") for n in "abc")
    data: dict = {}
    _set_disks(data, [a, b])
    assert [t for _m, t in _disks_with_targets(data)] == ["vdb", "vdc"]
    _set_disks(data, [b, c])  # a goes: b keeps vdc, c takes the free vdb
    assert dict((m.name, t) for m, t in _disks_with_targets(data)) == {"b": "vdc",
                                                                       "c": "vdb"}


def test_cgroup_items_per_device_smallest_limit_wins(monkeypatch):
    from services.instance.drivers import disk_mounts

    monkeypatch.setattr(disk_mounts, "block_device_of",
                        lambda src: (7, 1) if src.startswith("/loop") else (253, 0))
    ms = [DiskMount(name="a", source="/x", read_bps=5_000_000, write_iops=100),
          DiskMount(name="b", source="/y", read_bps=2_000_000),
          DiskMount(name="c", source="/loop/v", write_bps=1000),
          DiskMount(name="d", source="/nolimit")]
    assert disk_mounts.blkio_v1_items(ms) == [
        ("blkio.throttle.read_bps_device", "253:0 2000000"),
        ("blkio.throttle.write_bps_device", "7:1 1000"),
        ("blkio.throttle.write_iops_device", "253:0 100")]
    assert disk_mounts.io_v2_items(ms) == [("io.max", "253:0 rbps=2000000 wiops=100"),
                                           ("io.max", "7:1 wbps=1000")]


def test_a_source_on_no_block_device_cannot_be_limited():
    from services.instance.drivers import disk_mounts

    with pytest.raises(BadRequest, match="not on a block device"):
        disk_mounts.block_device_of("/proc/self")
