"""Which device changes a running instance can take, decided before anything is stored.

Why: an update that stores a change the running instance never sees answers 200 with
nothing changed; the user finds out at the next restart, or never. What is applied live:
extra disks (see :mod:`.disks`), NICs (plugged, unplugged or re-plugged; containers and
VMs), ``proxy`` and ``unix-char``/``unix-block`` devices (containers), all through
:mod:`.hotplug`; a NIC's ``limits.*`` (tc on the host side) and ``ipv4.address``/
``ipv6.address`` (its static DHCP lease) without re-plugging it; for a container, the root
disk's ``size`` (a storage quota, which the pool applies at once). Any other device
change to a running (or frozen) instance is refused with a 400 naming the device and
saying to stop it first. The root disk's pool cannot change at all: the volume lives in
the pool it was made in (LXD refuses too).
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import BadRequest

Devices = Mapping[str, Mapping[str, str]]
RUNNING = ("Running", "Frozen")
# Device types hot-plugged into a running instance of each type (see hotplug).
HOTPLUG_TYPES = {"container": frozenset({"nic", "proxy", "unix-char", "unix-block"}),
                 "virtual-machine": frozenset({"nic"})}
# NIC keys whose change needs no re-plug (applied on the host side / by the network).
SOFT_NIC_KEYS = ("limits.", "ipv4.address", "ipv6.address")
# Container keys LXC reads only when it starts the container (its config file); LXD stores
# them for the next start without a word, which is the silent no-op this module is for.
START_ONLY = ("raw.lxc", "security.nesting")


def _present(devs: Devices) -> dict[str, Mapping[str, str]]:
    """Devices that exist (a ``none`` device masks a profile's device of that name)."""
    return {n: d for n, d in devs.items() if d.get("type") != "none"}


def _root(devs: Devices) -> tuple[str, Mapping[str, str]] | None:
    for name, dev in devs.items():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            return name, dev
    return None


def root_size_change(old: Devices, new: Devices) -> str | None:
    """The new root ``size`` ("" = no limit) when it changed, else None."""
    a, b = _root(old), _root(new)
    if a is None or b is None or a[1].get("size", "") == b[1].get("size", ""):
        return None
    return b[1].get("size", "")


def check(instance_type: str, status: str, old: Devices, new: Devices) -> None:
    """400 for a device change Corral would store without applying it."""
    a, b = _root(old), _root(new)
    if a and b and a[1].get("pool") != b[1].get("pool"):
        raise BadRequest(f"Cannot change the root disk's pool ({a[1].get('pool')!r} -> "
                         f"{b[1].get('pool')!r}) of an existing instance: its volume stays "
                         "in the pool it was made in; copy the instance to the other pool")
    if status not in RUNNING:
        return
    kind = instance_type.replace("-", " ")
    if a and b and a[1].get("size", "") != b[1].get("size", "") and \
            instance_type != "container":
        raise BadRequest(f"Device {b[0]!r} (root disk) 'size' cannot change while this "
                         f"{kind} runs: stop the instance first")
    was, now = _present(old), _present(new)
    roots = {r[0] for r in (a, b) if r}
    for name in sorted((set(was) | set(now)) - roots):
        before, after = was.get(name), now.get(name)
        if before == after:
            continue
        dev_type = (after or before or {}).get("type", "")
        if dev_type == "disk" and (before or {}).get("type", "disk") == "disk" and \
                (after or {}).get("type", "disk") == "disk":
            continue  # an extra disk: hot-plugged by update (disks.hotplug)
        types = {d.get("type") for d in (before, after) if d}
        if types <= HOTPLUG_TYPES.get(instance_type, frozenset()):
            nictype = (after or {}).get("nictype", "bridged")
            if (after or {}).get("type") == "nic" and not after.get("network") and \
                    nictype != "bridged":
                raise BadRequest(f"Device {name!r}: a {nictype} NIC cannot be hot-plugged "
                                 f"into a running {kind} yet (bridged NICs can): stop the "
                                 "instance first")
            continue  # plugged, unplugged or re-plugged by update (hotplug.apply)
        action = "added to" if before is None else "removed from" if after is None \
            else "changed on"
        raise BadRequest(f"Device {name!r} ({dev_type}) cannot be {action} a running "
                         f"{kind}: Corral does not hot-plug {dev_type} devices yet; stop "
                         "the instance first")


def check_config(instance_type: str, status: str, old: Mapping[str, str],
                 new: Mapping[str, str]) -> None:
    """400 for a start-only key changed while the container runs (``limits.*`` are the
    driver's business: see update.check_live)."""
    if status not in RUNNING or instance_type != "container":
        return
    stuck = [k for k in START_ONLY if old.get(k, "") != new.get(k, "")]
    if stuck:
        raise BadRequest(f"{', '.join(stuck)} cannot change while this container runs "
                         "(LXC reads it at start): stop the instance first, set the new "
                         "value, start it again")
