"""A neutral NIC rendered by each instance driver: LXC config keys, libvirt XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from services.instance.drivers import lxc_config, qemu_xml
from services.instance.drivers.base import InstanceSpec
from shared.messages.network import Nic, NicConfigReply

BRIDGED = Nic(name="eth0", nictype="bridged", parent="br0", bridge="br0",
              host_name="veth1234abcd", hwaddr="00:16:3e:aa:bb:cc", mtu=1400,
              network="br0")
MACVLAN = Nic(name="eth1", nictype="macvlan", parent="eno1", hwaddr="00:16:3e:00:00:01")
P2P = Nic(name="eth2", nictype="p2p", host_name="vethp2p", hwaddr="00:16:3e:00:00:02")


def test_bridged_nic_as_lxc_keys() -> None:
    assert lxc_config.nic_lines(0, BRIDGED) == [
        "lxc.net.0.type = veth", "lxc.net.0.veth.pair = veth1234abcd",
        "lxc.net.0.link = br0", "lxc.net.0.flags = up", "lxc.net.0.name = eth0",
        "lxc.net.0.hwaddr = 00:16:3e:aa:bb:cc", "lxc.net.0.mtu = 1400"]


def test_macvlan_and_p2p_as_lxc_keys() -> None:
    mac = lxc_config.nic_lines(1, MACVLAN)
    assert mac[:3] == ["lxc.net.1.type = macvlan", "lxc.net.1.macvlan.mode = bridge",
                       "lxc.net.1.link = eno1"]
    assert not any("veth.pair" in ln or "mtu" in ln for ln in mac)
    p2p = lxc_config.nic_lines(2, P2P)
    assert "lxc.net.2.veth.pair = vethp2p" in p2p and not any(".link" in ln for ln in p2p)


def test_config_numbers_nics_in_order_or_says_empty(tmp_path: Path) -> None:
    spec = InstanceSpec("c1", {}, {}, tmp_path, [BRIDGED, MACVLAN])
    text = lxc_config.render(spec, tmp_path, tmp_path / "rootfs", None, idmapped=False)
    assert "lxc.net.0.link = br0" in text and "lxc.net.1.link = eno1" in text
    bare = lxc_config.render(InstanceSpec("c1", {}, {}, tmp_path), tmp_path,
                             tmp_path / "rootfs", None, idmapped=False)
    assert "lxc.net.0.type = empty" in bare and f"dir:{tmp_path / 'rootfs'}" in bare


def test_bridged_nic_as_libvirt_interface() -> None:
    iface = qemu_xml.interface(BRIDGED)
    assert iface.tag == "interface" and iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "br0"
    assert iface.find("target").get("dev") == "veth1234abcd"
    assert iface.find("mac").get("address") == "00:16:3e:aa:bb:cc"
    assert iface.find("mtu").get("size") == "1400"
    assert iface.find("model").get("type") == "virtio"


def test_domain_xml_carries_every_nic() -> None:
    spec = qemu_xml.DomainSpec(
        name="v1", uuid="00000000-0000-0000-0000-000000000001", vmdir="/x/v1",
        disk="/x/root.qcow2", memory_kib=1024, max_memory_kib=1024, vcpus=1, max_vcpus=2,
        console_log="/x/console.log", agent_socket="/x/agent.sock",
        nics=[BRIDGED, BRIDGED.model_copy(update={"name": "eth1", "bridge": "br1",
                                                  "hwaddr": "00:16:3e:00:00:09",
                                                  "host_name": "tap2", "mtu": None})])
    dom = ET.fromstring(qemu_xml.render(spec))
    ifaces = dom.findall("devices/interface")
    assert [i.find("source").get("bridge") for i in ifaces] == ["br0", "br1"]
    assert ifaces[1].find("mtu") is None
    assert {i.find("mac").get("address"): i.find("target").get("dev") for i in ifaces} == {
        "00:16:3e:aa:bb:cc": "veth1234abcd", "00:16:3e:00:00:09": "tap2"}


def test_network_reply_is_the_neutral_nic() -> None:
    """What crosses the bus has no driver syntax; drivers store and reload it as is."""
    reply = NicConfigReply.model_validate(BRIDGED.model_dump())
    assert isinstance(reply, Nic) and reply == NicConfigReply(**BRIDGED.model_dump())
    assert not any(k.startswith("lxc") for k in reply.model_dump())
