"""A project's limits and restrictions, checked against its instances (LXD's rules).

Pure logic, no I/O: the caller gives the project's config and the instances as they
would be after the change (each with its expanded config and devices), and gets a 400
with LXD 5.0's message (``lxd/project/permissions.go``) or nothing.

Why here and at create/update only: LXD checks a project's limits when an instance (or a
profile it uses) is created or changed, never while it runs; the instance service owns
instances and profiles, so it is the one place that sees every change.

- ``limits.instances``, ``limits.containers``, ``limits.virtual-machines``: counts.
- ``limits.cpu``, ``limits.memory``, ``limits.processes``, ``limits.disk``: aggregates;
  once a project sets one, each of its instances must set the key itself or through a
  profile (``size`` of the root disk for ``limits.disk``), and the sum may not exceed it.
- ``restricted=true`` turns on the ``restricted.*`` keys, each with LXD's default
  (privileged containers, nesting, low-level keys and disks not backed by a pool are
  refused unless the project allows them); ``restricted.snapshots`` (``block`` by
  default) refuses instance and volume snapshots (:func:`check_snapshot_creation`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import restrictions
from shared.errors import BadRequest

CONTAINER = "container"
VM = "virtual-machine"
COUNT_KEYS = {CONTAINER: "limits.containers", VM: "limits.virtual-machines"}
AGGREGATE_KEYS = ("limits.cpu", "limits.disk", "limits.memory", "limits.processes")

# restricted.* keys Corral enforces, with LXD's defaults when restricted=true.
RESTRICTION_DEFAULTS = {
    "restricted.containers.nesting": "block",
    "restricted.containers.lowlevel": "block",
    "restricted.containers.privilege": "unprivileged",
    "restricted.virtual-machines.lowlevel": "block",
    "restricted.devices.disk": "managed",
    "restricted.devices.disk.paths": "",
    "restricted.snapshots": "block",
}
CONTAINER_LOWLEVEL = frozenset({
    "boot.host_shutdown_timeout", "linux.kernel_modules", "raw.apparmor", "raw.idmap",
    "raw.lxc", "raw.seccomp", "security.devlxd.images", "security.idmap.base",
    "security.idmap.size"})
VM_LOWLEVEL = frozenset({
    "boot.host_shutdown_timeout", "limits.memory.hugepages", "raw.apparmor", "raw.idmap",
    "raw.qemu", "raw.qemu.conf"})

_UNITS = {"": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "PB": 10**15, "EB": 10**18, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
          "TiB": 2**40, "PiB": 2**50, "EiB": 2**60}
_SIZE = re.compile(r"^\s*(\d+)\s*([kMGTPE]i?B|B)?\s*$")


@dataclass
class Instance:
    """What the checks read of an instance (expanded: profiles applied)."""

    name: str
    type: str = CONTAINER
    config: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, rec: Mapping[str, Any]) -> "Instance":
        """From an instance's KV record."""
        return cls(rec["name"], rec.get("type") or CONTAINER,
                   rec.get("expanded_config") or {}, rec.get("expanded_devices") or {})


def parse_size(value: str) -> int:
    """LXD's byte sizes (``units.ParseByteSizeString``): ``512MiB``, ``1GB``, ``100``."""
    m = _SIZE.match(value or "")
    if not m:
        raise ValueError(f"Invalid value {value!r}: expected a size such as 512MiB")
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def parse_aggregate(key: str, value: str) -> int:
    """A limit's value as a number, the way LXD sums it (``aggregateLimitConfigValueParsers``)."""
    if key == "limits.memory":
        if value.endswith("%"):
            raise ValueError("Value can't be a percentage")
        return parse_size(value)
    if key == "limits.disk":
        return parse_size(value)
    if key == "limits.cpu" and ("," in value or "-" in value):
        raise ValueError("CPUs can't be pinned if project limits are used")
    if not value.strip().isdigit():
        raise ValueError(f"Invalid value {value!r}: expected an integer")
    return int(value)


def _root_size(inst: Instance) -> str:
    roots = [d for d in inst.devices.values()
             if d.get("type") == "disk" and d.get("path") == "/" and d.get("pool")]
    return roots[0].get("size", "") if roots else ""


def instance_limit(inst: Instance, key: str, project: str) -> int:
    """The instance's value for an aggregate ``key``; 400 when it sets none (LXD refuses
    instances without the key in a project that limits it: their use is unbounded)."""
    if key == "limits.disk":
        value = _root_size(inst)
        if not value:
            raise BadRequest(f'Instance "{inst.name}" in project "{project}" has no "size" '
                             "config set on the root device either directly or via a profile")
    else:
        value = inst.config.get(key, "")
        if not value:
            raise BadRequest(f'Instance "{inst.name}" in project "{project}" has no "{key}" '
                             "config, either directly or via a profile")
    try:
        return parse_aggregate(key, value)
    except ValueError:
        raise BadRequest(f'Failed parsing "{key}" for instance "{inst.name}" in project '
                         f'"{project}"') from None


def totals(project: str, instances: Iterable[Instance], keys: Iterable[str]) -> dict[str, int]:
    """Sum of each aggregate key over the instances."""
    insts = list(instances)
    return {k: sum(instance_limit(i, k, project) for i in insts) for k in keys}


def check_counts(project: str, config: Mapping[str, str], kind: str,
                 existing: list[Instance]) -> None:
    """Before adding one instance of ``kind`` to ``existing`` (LXD's order: the type's
    own limit first, then the total)."""
    key = COUNT_KEYS.get(kind)
    if key and config.get(key, "") != "":
        same = sum(1 for i in existing if i.type == kind)
        if same >= int(config[key]):
            raise BadRequest(f'Reached maximum number of instances of type "{kind}" in '
                             f'project "{project}"')
    if config.get("limits.instances", "") != "" and \
            len(existing) >= int(config["limits.instances"]):
        raise BadRequest(f'Reached maximum number of instances in project "{project}"')


def check_aggregates(project: str, config: Mapping[str, str],
                     instances: list[Instance]) -> None:
    """The project's aggregate limits against the instances as they would be."""
    keys = [k for k in AGGREGATE_KEYS if config.get(k, "") != ""]
    if not keys:
        return
    sums = totals(project, instances, keys)
    for k in keys:
        try:
            limit = parse_aggregate(k, config[k])
        except ValueError as exc:
            raise BadRequest(f'Invalid value "{config[k]}" for limit "{k}": {exc}') from None
        if sums[k] > limit:
            raise BadRequest(f'Reached maximum aggregate value "{config[k]}" for "{k}" in '
                             f'project "{project}"')


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "on")


def _restriction(config: Mapping[str, str], key: str) -> str:
    return config.get(key, RESTRICTION_DEFAULTS[key])


def _disk_allowed(config: Mapping[str, str], source: str) -> bool:
    paths = [p.strip() for p in _restriction(config, "restricted.devices.disk.paths").split(",")
             if p.strip()]
    return any(source == p or source.startswith(p.rstrip("/") + "/") for p in paths)


def check_snapshot_creation(project: str, config: Mapping[str, str]) -> None:
    """LXD's AllowSnapshotCreation: a restricted project takes no instance or custom volume
    snapshots unless ``restricted.snapshots=allow`` (one rule: shared/restrictions.py)."""
    restrictions.check_snapshot_creation(project, config)


def check_restrictions(project: str, config: Mapping[str, str], inst: Instance) -> None:
    """``restricted.*`` against one instance (nothing unless ``restricted=true``)."""
    if not _true(config.get("restricted")):
        return
    kind = inst.type
    low = _restriction(config, "restricted.containers.lowlevel" if kind == CONTAINER
                       else "restricted.virtual-machines.lowlevel") == "allow"
    forbidden = CONTAINER_LOWLEVEL if kind == CONTAINER else VM_LOWLEVEL
    where = f'{kind} "{inst.name}" of project "{project}"'
    for key in sorted(inst.config):
        value = inst.config[key]
        if not low and (key in forbidden or (kind == CONTAINER and key.startswith(
                "security.syscalls.intercept"))):
            raise BadRequest(f'Use of low-level config "{key}" on {where} is forbidden')
        if kind != CONTAINER:
            continue
        why = None
        if key == "security.privileged" and _true(value) and \
                _restriction(config, "restricted.containers.privilege") != "allow":
            why = "Privileged containers are forbidden"
        elif key == "security.nesting" and _true(value) and \
                _restriction(config, "restricted.containers.nesting") == "block":
            why = "Container nesting is forbidden"
        elif key == "security.idmap.isolated" and not _true(value) and \
                _restriction(config, "restricted.containers.privilege") == "isolated":
            why = "Non-isolated containers are forbidden"
        if why:
            raise BadRequest(f'Invalid value "{value}" for config "{key}" on {where}: {why}')
    if kind == CONTAINER and "security.idmap.isolated" not in inst.config and \
            _restriction(config, "restricted.containers.privilege") == "isolated":
        raise BadRequest(f'Invalid value "false" for config "security.idmap.isolated" on '
                         f"{where}: Non-isolated containers are forbidden")
    for name in sorted(inst.devices):
        dev = inst.devices[name]
        if dev.get("type") != "disk":
            continue
        if dev.get("path") == "/" and dev.get("pool"):
            continue  # the root disk is always allowed
        mode = _restriction(config, "restricted.devices.disk")
        why = None
        if mode == "block":
            why = "Disk devices are forbidden"
        elif mode == "managed" and not dev.get("pool"):
            why = "Attaching disks not backed by a pool is forbidden"
        elif mode == "allow" and not dev.get("pool") and \
                not _disk_allowed(config, dev.get("source", "")):
            why = f'Disk source path "{dev.get("source", "")}" not allowed'
        if why:
            raise BadRequest(f'Invalid device "{name}" on {where}: {why}')


def check_create(project: str, config: Mapping[str, str], new: Instance,
                 existing: list[Instance]) -> None:
    """May ``new`` join the project's ``existing`` instances?"""
    check_counts(project, config, new.type, existing)
    try:
        check_restrictions(project, config, new)
        check_aggregates(project, config, [*existing, new])
    except BadRequest as exc:
        raise BadRequest(f"Failed checking if instance creation allowed: {exc.message}") \
            from None


def check_update(project: str, config: Mapping[str, str], changed: Instance,
                 existing: list[Instance]) -> None:
    """May an instance become ``changed`` (``existing`` includes its old self)?"""
    others = [i for i in existing if i.name != changed.name]
    try:
        check_restrictions(project, config, changed)
        check_aggregates(project, config, [*others, changed])
    except BadRequest as exc:
        raise BadRequest(f"Failed checking if instance update allowed: {exc.message}") \
            from None


def check_project_change(project: str, new_config: Mapping[str, str],
                         instances: list[Instance]) -> None:
    """A project's new limits must hold for what it has now (LXD's ``AllowProjectUpdate``)."""
    if new_config.get("limits.instances", "") != "" and \
            len(instances) > int(new_config["limits.instances"]):
        raise BadRequest(f'"limits.instances" is too low: there currently are '
                         f'{len(instances)} total instances in project "{project}"')
    for kind, key in COUNT_KEYS.items():
        n = sum(1 for i in instances if i.type == kind)
        if new_config.get(key, "") != "" and n > int(new_config[key]):
            raise BadRequest(f'"{key}" is too low: there currently are {n} instances of '
                             f'type {kind} in project "{project}"')
    for key in AGGREGATE_KEYS:
        if new_config.get(key, "") == "":
            continue
        try:
            limit = parse_aggregate(key, new_config[key])
        except ValueError as exc:
            raise BadRequest(f'Invalid value "{new_config[key]}" for limit "{key}": {exc}') \
                from None
        total = totals(project, instances, [key])[key]
        if total > limit:
            raise BadRequest(f'"{key}" is too low: current total is "{total}"')
    for inst in instances:
        check_restrictions(project, new_config, inst)


def state(config: Mapping[str, str], instances: list[Instance]) -> dict[str, Any]:
    """LXD's ``/1.0/projects/<p>/state``: each resource's ``Limit`` (-1: none) and
    ``Usage`` (instances that set no value, or one that does not parse, count 0)."""
    def limit(key: str) -> int:
        try:
            return parse_aggregate(key, config[key]) if config.get(key, "") != "" else -1
        except ValueError:
            return -1

    def usage(key: str) -> int:
        total = 0
        for inst in instances:
            value = _root_size(inst) if key == "limits.disk" else inst.config.get(key, "")
            try:
                total += parse_aggregate(key, value) if value else 0
            except ValueError:
                continue
        return total

    def count(key: str) -> int:
        return int(config[key]) if config.get(key, "") != "" else -1

    res: dict[str, Any] = {
        name: {"Limit": limit(key), "Usage": usage(key)}
        for name, key in (("cpu", "limits.cpu"), ("disk", "limits.disk"),
                          ("memory", "limits.memory"), ("processes", "limits.processes"))}
    res["networks"] = {"Limit": -1, "Usage": 0}
    res["instances"] = {"Limit": count("limits.instances"), "Usage": len(instances)}
    for kind, key in COUNT_KEYS.items():
        res["containers" if kind == CONTAINER else "virtual-machines"] = {
            "Limit": count(key), "Usage": sum(1 for i in instances if i.type == kind)}
    return {"resources": res}
