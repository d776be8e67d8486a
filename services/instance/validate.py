"""Checks on instance input that need no host access: names, config keys, devices.

Why here: the create endpoint answers bad input synchronously (an error envelope, not a
failed operation), and update/patch reuse the same rules so nothing invalid reaches KV.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.api import description as check_description  # noqa: F401
from shared.api import devices_map, string_map
from shared.errors import BadRequest

from . import disk_rules, limits, proxy_rules, snapshot_schedule
from .drivers.lxc_config import check_raw_lxc_values, parse_raw_lxc
from .drivers.oci_app import check_keys as check_oci_keys
from .names import check_name  # noqa: F401  (the one rule, re-exported for callers)

# Plain keys we implement; the prefixes below take any suffix.
KNOWN_KEYS = {*limits.LIMIT_KEYS, "security.privileged", "security.nesting",
              "boot.autostart", "boot.autostart.delay", "boot.autostart.priority",
              "boot.host_shutdown_timeout", "raw.lxc",
              "snapshots.schedule", "snapshots.schedule.stopped", "snapshots.pattern",
              "snapshots.expiry",
              "migration.stateful",  # a VM may move live (gateway/vm_live_move.py)
              "cluster.evacuate"}  # what an evacuation does with it (gateway/evacuate.py)
FREE_PREFIXES = ("environment.", "user.", "image.", "volatile.")
BOOL_KEYS = ("security.privileged", "security.nesting", "boot.autostart",
             "migration.stateful")
INT_KEYS = ("boot.autostart.delay", "boot.autostart.priority", "boot.host_shutdown_timeout")
EVACUATE_MODES = ("auto", "migrate", "live-migrate", "stop")  # LXD's
DEVICE_TYPES = ("nic", "disk", "proxy", "unix-char", "unix-block", "none")
# What Corral applies of a root disk device (LXD has more: refused by name, not ignored).
ROOT_DISK_KEYS = frozenset({"type", "path", "pool", "size"})
# LXD's other raw.* keys: refused by name until Corral applies them, never stored unused.
RAW_UNSUPPORTED = ("raw.apparmor", "raw.idmap", "raw.seccomp", "raw.qemu", "raw.qemu.conf")


def check_config(config: Any) -> dict[str, str]:
    """A config map with only keys we know and valid values (400 otherwise). An empty value
    is no value: `lxc profile unset` sends the key with "" (PATCH callers merge the raw
    body first, so "" removes the key there too)."""
    cfg = {k: v for k, v in string_map("config", config).items() if v != ""}
    for k, v in cfg.items():
        if k in RAW_UNSUPPORTED:
            raise BadRequest(f"{k} is not supported yet: Corral applies raw.lxc only")
        if k in KNOWN_KEYS or k.startswith(FREE_PREFIXES):
            if k == "raw.lxc":
                parse_raw_lxc(v)  # syntax and refused keys; LXC's own check: check_for_type
            elif k in BOOL_KEYS:
                limits.parse_bool(k, v)
            elif k in INT_KEYS and v and not v.lstrip("-").isdigit():
                raise BadRequest(f"Invalid value {v!r} for {k}: expected an integer")
            elif k == "cluster.evacuate" and v not in EVACUATE_MODES:
                raise BadRequest(f"Invalid value {v!r} for {k}: use one of "
                                 f"{', '.join(EVACUATE_MODES)}")
            continue
        if k.startswith("oci."):
            continue  # checked together below
        raise BadRequest(f"Unknown configuration key: {k}")
    check_oci_keys(cfg)
    limits.validate_limits(cfg)
    snapshot_schedule.check_config(cfg)
    return cfg


def check_devices(devices: Any) -> dict[str, dict[str, str]]:
    devs = devices_map(devices)
    for name, dev in devs.items():
        proxy_rules.check_type(name, dev["type"])  # gpu, usb...: 400 with the reason
        if dev["type"] not in DEVICE_TYPES:
            raise BadRequest(f"Device {name!r}: type {dev['type']!r} is not supported "
                             f"(use {', '.join(DEVICE_TYPES)})")
        if dev["type"] == "proxy":
            proxy_rules.check_proxy(name, dev)
        elif dev["type"] in ("unix-char", "unix-block"):
            proxy_rules.check_unix(name, dev)
        if dev["type"] == "disk" and dev.get("path") != "/":
            disk_rules.check_device(name, dev)  # host paths, custom volumes
        elif dev["type"] == "disk":
            if dev.get("source"):  # LXD's rule too
                raise BadRequest(f"Device {name!r}: a root disk may not have a source; it "
                                 "lives in its storage pool")
            unsupported = sorted(set(dev) - ROOT_DISK_KEYS)
            if unsupported:  # never accepted and silently ignored
                raise BadRequest(f"Device {name!r}: {', '.join(unsupported)} "
                                 f"{'is' if len(unsupported) == 1 else 'are'} not supported "
                                 "yet for a root disk (use pool and size)")
        if dev["type"] == "nic" and not (dev.get("network") or dev.get("parent")
                                         or dev.get("nictype") in ("p2p", "routed")):
            raise BadRequest(f"Device {name!r}: a nic needs 'network' or 'parent'")
    disk_rules.check_paths(devs)
    _check_unique(devs)
    return devs


def _check_unique(devs: dict[str, dict[str, str]]) -> None:
    """Two devices that would make the same thing in the instance: a NIC name, a unix
    device path, a proxy's listen address (LXD: one fails at start; here: before)."""
    seen: dict[tuple[str, str], str] = {}
    for name, dev in sorted(devs.items()):
        t = dev["type"]
        what = (dev.get("name") if t == "nic" else dev.get("listen") if t == "proxy"
                else (dev.get("path") or dev.get("source")) if t.startswith("unix-")
                else None)
        if not what:
            continue
        k = ("unix" if t.startswith("unix-") else t, what)
        if k in seen:
            raise BadRequest(f"Devices {seen[k]!r} and {name!r} both use {what!r}")
        seen[k] = name


def root_device(devices: dict[str, dict[str, str]]) -> tuple[str, dict[str, str]]:
    """The (name, device) of the root disk of expanded devices; 400 when there is none."""
    roots = [(n, d) for n, d in devices.items() if d.get("type") == "disk" and
             d.get("path") == "/"]
    if not roots:
        raise BadRequest("No root device could be found")
    if len(roots) > 1:
        raise BadRequest(f"More than one root device: {', '.join(n for n, _ in roots)}")
    name, dev = roots[0]
    if not dev.get("pool"):
        raise BadRequest(f"The root device {name!r} has no storage pool ('pool' key)")
    return roots[0]


def check_profiles(profiles: Any) -> list[str]:
    if profiles is None:
        return ["default"]
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise BadRequest("Invalid profiles: expected a list of profile names")
    if len(set(profiles)) != len(profiles):
        raise BadRequest("Invalid profiles: a profile is listed twice")
    return list(profiles)


def check_bool(what: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"Invalid {what}: expected true or false")
    return value


# Keys that mean something for containers only (LXD's InstanceConfigKeysContainer, of
# those Corral knows): on a VM they are refused, as LXD does, rather than stored unused.
# (LXD also refuses limits.processes and limits.memory.swap on VMs; Corral still stores
# them for a VM and refuses them only while it runs: not applied to VMs yet.)
CONTAINER_ONLY_KEYS = ("security.privileged", "security.nesting", "raw.lxc")


async def check_for_type(instance_type: str, config: dict[str, str]) -> None:
    """Checks of an expanded config that depend on the instance's type, before anything
    is stored: container-only keys on a VM are a 400 (a privileged VM means nothing: the
    guest has its own kernel), and LXC's own verdict on ``raw.lxc`` (liblxc blocks: a
    thread): a line LXC cannot load would leave the container unloadable."""
    if instance_type != "container":
        for k in CONTAINER_ONLY_KEYS:
            if config.get(k):
                raise BadRequest(f"Invalid config: {k} applies to containers only, not to "
                                 f"a {instance_type}")
        oci = sorted(k for k, v in config.items() if k.startswith("oci.") and v)
        if oci:
            raise BadRequest(f"Invalid config: {', '.join(oci)} applies to application "
                             f"containers only, not to a {instance_type}")
        return
    raw = config.get("raw.lxc", "")
    if raw:
        await asyncio.to_thread(check_raw_lxc_values, raw)
