"""proxy, unix-char and unix-block device rules, and which running-device changes
re-plug a NIC (pure logic: no host)."""

from __future__ import annotations

import pytest

from services.instance.hotplug import changes, soft_nic_change
from services.instance.live_changes import HOTPLUG_TYPES
from services.instance.proxy_nat import check as nat_check
from services.instance.proxy_rules import Address, check_proxy, check_unix, parse_address
from services.instance.validate import check_devices
from shared.errors import BadRequest

P = {"type": "proxy", "listen": "tcp:127.0.0.1:8080", "connect": "tcp:127.0.0.1:80"}


@pytest.mark.parametrize("value, want", [
    ("tcp:127.0.0.1:80", Address("tcp", "127.0.0.1", 80)),
    ("udp:[::1]:53", Address("udp", "::1", 53)),
    ("tcp:0.0.0.0:443", Address("tcp", "0.0.0.0", 443)),
    ("unix:/run/x.sock", Address("unix", path="/run/x.sock")),
    ("unix:@abstract", Address("unix", path="@abstract")),
])
def test_addresses(value, want):
    assert parse_address("p", "listen", value) == want
    assert str(want) == value


@pytest.mark.parametrize("value, words", [
    ("tcp:127.0.0.1", "missing port"), ("tcp:localhost:80", "not an IP address"),
    ("tcp:127.0.0.1:0", "1 to 65535"), ("tcp:127.0.0.1:80-90", "ranges"),
    ("unix:run/x", "absolute"), ("http:1.2.3.4:80", "expected tcp"), ("tcp:", "expected"),
])
def test_bad_addresses(value, words):
    with pytest.raises(BadRequest) as exc:
        parse_address("p", "listen", value)
    assert words in exc.value.message and "'p'" in exc.value.message


@pytest.mark.parametrize("extra, words", [
    ({"bind": "guest"}, "bind"), ({"listen": "udp:127.0.0.1:1"}, "udp"),
    ({"nat": "maybe"}, "nat"), ({"nat": "true", "bind": "instance"}, "bind=host"),
    ({"nat": "true", "connect": "unix:/x"}, "tcp and udp"),
    ({"mode": "999", "listen": "unix:/x"}, "mode"),
    ({"proxy_protocol": "true"}, "proxy_protocol"), ({"security.uid": "1000"}, "security"),
    ({"uid": "-1", "listen": "unix:/x"}, "uid"), ({"colour": "red"}, "colour"),
    ({"mode": "0600"}, "non-abstract unix"), ({"uid": "5", "listen": "unix:@a"}, "unix"),
])
def test_bad_proxy_devices(extra, words):
    with pytest.raises(BadRequest) as exc:
        check_proxy("p", {**P, **extra})
    assert words in exc.value.message


def test_nat_needs_a_static_connect_address_and_no_loopback():
    dev = {**P, "nat": "true", "listen": "tcp:10.0.0.1:80", "connect": "tcp:10.0.0.5:80"}
    nic = {"type": "nic", "network": "n", "ipv4.address": "10.0.0.5"}
    with pytest.raises(BadRequest, match="static"):
        nat_check("p", dev, {"p": dev})
    assert nat_check("p", dev, {"p": dev, "eth0": nic})[1].host == "10.0.0.5"
    with pytest.raises(BadRequest, match="loopback"):
        nat_check("p", {**dev, "listen": "tcp:127.0.0.1:80"}, {"eth0": nic})


@pytest.mark.parametrize("dev, words", [
    ({}, "'source' or 'path'"), ({"path": "dev/x"}, "absolute"),
    ({"path": "/dev/x", "major": "1"}, "both"), ({"path": "/dev/x"}, "required"),
    ({"source": "/dev/x", "mode": "0999"}, "mode"), ({"source": "/dev/x", "x": "1"}, "'x'"),
    ({"source": "/dev/x", "required": "perhaps"}, "required"),
])
def test_bad_unix_devices(dev, words):
    with pytest.raises(BadRequest) as exc:
        check_unix("u", {"type": "unix-char", **dev})
    assert words in exc.value.message


@pytest.mark.parametrize("kind", ["gpu", "usb", "infiniband", "pci", "tpm"])
def test_host_less_types_are_refused_with_the_reason(kind):
    with pytest.raises(BadRequest) as exc:
        check_devices({"x": {"type": kind}})
    assert kind in exc.value.message and ("host" in exc.value.message or
                                          "not supported" in exc.value.message)


def test_devices_making_the_same_thing_are_refused():
    nic = {"type": "nic", "network": "n", "name": "eth1"}
    with pytest.raises(BadRequest, match="eth1"):
        check_devices({"a": nic, "b": dict(nic)})
    with pytest.raises(BadRequest, match="8080"):
        check_devices({"a": P, "b": dict(P)})
    check_devices({"a": P, "b": {**P, "listen": "tcp:127.0.0.1:8081"}})


def test_which_nic_changes_replug():
    nic = {"type": "nic", "network": "n"}
    assert soft_nic_change(nic, {**nic, "limits.max": "1Mbit"})
    assert soft_nic_change(nic, {**nic, "ipv4.address": "10.0.0.9"})
    assert not soft_nic_change(nic, {**nic, "mtu": "1400"})
    old = {"eth0": nic, "p": P, "d": {"type": "disk", "path": "/", "pool": "x"}}
    new = {"eth0": {**nic, "mtu": "1400"}, "eth1": nic, "d": {"type": "disk"}}
    removed, added, soft = changes(old, new, HOTPLUG_TYPES["container"])
    assert removed == ["eth0", "p"] and added == ["eth0", "eth1"] and soft == []
    removed, added, soft = changes(old, {**old, "eth0": {**nic, "ipv6.address": "fd::9"}},
                                   HOTPLUG_TYPES["container"])
    assert (removed, added, soft) == ([], [], ["eth0"])
