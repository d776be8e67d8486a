"""NICs into and out of a RUNNING virtual machine (libvirt attach/detach, live only).

Why live only: the domain is defined again from the driver's spec at every start, and
the instance service stores the new NIC list there through ``update``; a persistent
change in libvirt would be a second copy to keep in step. A NIC is matched by its MAC on
detach (libvirt's rule for ``<interface>``), the guest sees a virtio-net PCI hot-plug.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import libvirt

from shared.errors import BadRequest

from . import qemu_xml
from .base import Nic

DETACH_TIMEOUT = 10.0


def _has(dom: libvirt.virDomain, hwaddr: str) -> bool:
    return f"address='{hwaddr.lower()}'" in dom.XMLDesc(0).lower()


def nic_attach(drv, name: str, nic: Nic) -> None:
    if nic.nictype != "bridged" or not (nic.bridge or nic.parent):
        raise BadRequest(f"NIC {nic.name!r}: virtual machines take bridged NICs only")
    dom = drv._live_domain(name)
    xml = ET.tostring(qemu_xml.interface(nic), encoding="unicode")
    try:
        dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as e:
        raise BadRequest(f"Failed to attach NIC {nic.name!r} to the running VM: "
                         f"{e.get_error_message()}") from None


def nic_detach(drv, name: str, nic: Nic) -> None:
    """Unplug (waits for the guest to release it, as a disk's unplug)."""
    dom = drv._live_domain(name)
    if not _has(dom, nic.hwaddr):
        return
    xml = ET.tostring(qemu_xml.interface(nic), encoding="unicode")
    try:
        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as e:
        raise BadRequest(f"Failed to detach NIC {nic.name!r} from the running VM: "
                         f"{e.get_error_message()}") from None
    deadline = time.monotonic() + DETACH_TIMEOUT
    while _has(dom, nic.hwaddr):
        if time.monotonic() > deadline:
            raise BadRequest(f"The guest did not release NIC {nic.name!r} within "
                             f"{DETACH_TIMEOUT:.0f} s; stop the instance to remove it")
        time.sleep(0.2)
