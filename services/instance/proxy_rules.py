"""Checks of ``proxy``, ``unix-char`` and ``unix-block`` devices that need no host access.

Why pure: profiles and instances are validated synchronously (an error envelope, not a
failed operation), with LXD's option names (lxd/device/proxy.go, unix_common.go). What
needs the host (does the source exist, is the instance's netns there) is checked by
:mod:`.hotplug` before anything changes.
"""

from __future__ import annotations

import glob
import ipaddress
import os
from dataclasses import dataclass
from typing import Mapping

from shared.errors import BadRequest

PROXY_KEYS = {"type", "listen", "connect", "bind", "nat", "uid", "gid", "mode",
              "security.uid", "security.gid", "proxy_protocol", "description"}
UNIX_KEYS = {"type", "path", "source", "major", "minor", "uid", "gid", "mode", "required"}
# LXD device types the host cannot offer here, with the reason given instead.
REFUSED_TYPES = {
    "gpu": "this host has no GPU (no /dev/dri or /dev/nvidia* device)",
    "usb": "this host has no USB device (/sys/bus/usb/devices is empty)",
    "infiniband": "this host has no InfiniBand device",
    "tpm": "TPM devices are not supported by Corral yet",
    "pci": "PCI passthrough needs KVM and IOMMU, which this host lacks",
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


@dataclass(frozen=True)
class Address:
    """One side of a proxy: ``tcp:127.0.0.1:80``, ``udp:[::1]:53``, ``unix:/run/x.sock``."""

    proto: str  # tcp, udp, unix
    host: str = ""  # IP address (tcp/udp)
    port: int = 0
    path: str = ""  # unix socket path ("@name": abstract)

    def __str__(self) -> str:
        if self.proto == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto}:{host}:{self.port}"


def flag(name: str, key: str, value: str) -> bool:
    v = value.lower()
    if v not in _TRUE + _FALSE:
        raise BadRequest(f"Device {name!r}: invalid value for {key!r}: {value!r} (true or "
                         "false)")
    return v in _TRUE


def parse_address(name: str, key: str, value: str) -> Address:
    """LXD's ``<type>:<addr>[:port]`` forms, one port (ranges: not yet, said so)."""
    proto, _, rest = value.partition(":")
    if proto not in ("tcp", "udp", "unix") or not rest:
        raise BadRequest(f"Device {name!r}: invalid {key} address {value!r}: expected "
                         "tcp:<ip>:<port>, udp:<ip>:<port> or unix:<path>")
    if proto == "unix":
        if not (rest.startswith("/") or rest.startswith("@")) or "\0" in rest:
            raise BadRequest(f"Device {name!r}: invalid {key} address {value!r}: a unix "
                             "socket path must be absolute (or @name for an abstract one)")
        if len(rest) > 90:
            raise BadRequest(f"Device {name!r}: {key} socket path {rest!r} is too long")
        return Address("unix", path=rest)
    host, sep, port = rest.rpartition(":")
    if not sep:
        raise BadRequest(f"Device {name!r}: invalid {key} address {value!r}: missing port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadRequest(f"Device {name!r}: invalid {key} address {value!r}: {host!r} is "
                         "not an IP address") from None
    if "-" in port or "," in port:
        raise BadRequest(f"Device {name!r}: {key} port ranges ({port!r}) are not supported "
                         "yet: one port per proxy device")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadRequest(f"Device {name!r}: invalid {key} port {port!r} (1 to 65535)")
    return Address(proto, host, int(port))


def _int(name: str, key: str, value: str, base: int = 10, top: int = 2**32 - 1) -> int:
    try:
        n = int(value, base)
    except ValueError:
        n = -1
    if not 0 <= n <= top:
        raise BadRequest(f"Device {name!r}: invalid value for {key!r}: {value!r}")
    return n


def check_proxy(name: str, dev: Mapping[str, str]) -> tuple[Address, Address]:
    """(listen, connect) of a valid proxy device; 400 naming the key otherwise."""
    unknown = sorted(set(dev) - PROXY_KEYS)
    if unknown:
        raise BadRequest(f"Device {name!r}: invalid proxy device keys {unknown} (known: "
                         f"{', '.join(sorted(PROXY_KEYS - {'type'}))})")
    for key in ("listen", "connect"):
        if not dev.get(key):
            raise BadRequest(f"Device {name!r}: missing required key {key!r} of a proxy "
                             "device")
    listen = parse_address(name, "listen", dev["listen"])
    connect = parse_address(name, "connect", dev["connect"])
    bind = dev.get("bind", "host") or "host"
    if bind not in ("host", "instance"):
        raise BadRequest(f"Device {name!r}: invalid value for 'bind': {bind!r} (host or "
                         "instance)")
    if (listen.proto == "udp") != (connect.proto == "udp"):
        raise BadRequest(f"Device {name!r}: cannot proxy between udp and "
                         f"{connect.proto if listen.proto == 'udp' else listen.proto}: "
                         "either both sides are udp or neither")
    if any(dev.get(k) for k in ("uid", "gid", "mode")) and \
            (listen.proto != "unix" or listen.path.startswith("@")):
        raise BadRequest(f"Device {name!r}: only proxy devices listening on a non-abstract "
                         "unix socket can carry uid, gid or mode (they are its owner and "
                         "permissions)")
    for key in ("uid", "gid", "security.uid", "security.gid"):
        if dev.get(key):
            _int(name, key, dev[key])
    if dev.get("mode"):
        _int(name, "mode", dev["mode"], 8, 0o777)
    if flag(name, "proxy_protocol", dev.get("proxy_protocol", "")):
        raise BadRequest(f"Device {name!r}: proxy_protocol is not supported by Corral yet")
    if any(dev.get(k) for k in ("security.uid", "security.gid")) and \
            dev.get("security.uid", "0") + dev.get("security.gid", "0") != "00":
        raise BadRequest(f"Device {name!r}: security.uid/security.gid are not supported "
                         "yet (the forwarder runs as root)")
    if flag(name, "nat", dev.get("nat", "")):
        if bind != "host":
            raise BadRequest(f"Device {name!r}: nat=true requires bind=host (LXD's rule)")
        if "unix" in (listen.proto, connect.proto):
            raise BadRequest(f"Device {name!r}: nat=true works for tcp and udp only, not "
                             "unix sockets")
        if listen.proto != connect.proto:
            raise BadRequest(f"Device {name!r}: nat=true needs the same protocol on both "
                             "sides")
        if listen.host in ("0.0.0.0", "::") or \
                ipaddress.ip_address(connect.host).is_unspecified:
            if ipaddress.ip_address(connect.host).is_unspecified:
                raise BadRequest(f"Device {name!r}: nat=true needs a connect address "
                                 "(the instance's static address), not a wildcard")
    return listen, connect


def check_unix(name: str, dev: Mapping[str, str]) -> None:
    unknown = sorted(set(dev) - UNIX_KEYS)
    if unknown:
        raise BadRequest(f"Device {name!r}: invalid {dev['type']} device keys {unknown} "
                         f"(known: {', '.join(sorted(UNIX_KEYS - {'type'}))})")
    if not dev.get("path") and not dev.get("source"):
        raise BadRequest(f"Device {name!r}: a {dev['type']} device needs 'source' or 'path'")
    for key in ("path", "source"):
        if dev.get(key) and not dev[key].startswith("/"):
            raise BadRequest(f"Device {name!r}: {key} {dev[key]!r} must be absolute")
    if bool(dev.get("major")) != bool(dev.get("minor")):
        raise BadRequest(f"Device {name!r}: set both 'major' and 'minor' or neither")
    if not dev.get("source") and not dev.get("major"):
        raise BadRequest(f"Device {name!r}: without 'source', 'major' and 'minor' are "
                         "required")
    for key in ("major", "minor"):
        if dev.get(key):
            _int(name, key, dev[key], top=2**20 - 1)
    for key in ("uid", "gid"):
        if dev.get(key):
            _int(name, key, dev[key])
    if dev.get("mode"):
        _int(name, "mode", dev["mode"], 8, 0o7777)
    flag(name, "required", dev.get("required", "true"))


def _host_has(dev_type: str) -> bool:
    """Whether the host has what a gpu/usb device would pass through (then the refusal
    says Corral does not pass it through yet, not that the host lacks it)."""
    if dev_type == "gpu":
        return os.path.isdir("/dev/dri") or bool(glob.glob("/dev/nvidia[0-9]*"))
    if dev_type == "usb":
        return bool(glob.glob("/sys/bus/usb/devices/*"))
    return False


def check_type(name: str, dev_type: str) -> None:
    if dev_type in REFUSED_TYPES:
        why = f"Corral does not pass {dev_type} devices through yet" \
            if _host_has(dev_type) else REFUSED_TYPES[dev_type]
        raise BadRequest(f"Device {name!r}: {dev_type} devices cannot be used here: {why}")
