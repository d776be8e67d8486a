"""What both ends of a migration share: progress reporting, LXD's architecture ids,
time conversions, the instance's volume paths (asked of the storage service)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.api import byte_size
from shared.bus import Bus
from shared.errors import NotFound
from shared.messages.storage import VolumePathReply, VolumePathRequest
from shared.models import ObjectRequest

CONTROL, FS = "control", "fs"
SECRETS = [CONTROL, FS]
PATH_TIMEOUT = 30.0
# LXD's shared/osarch ids (the Snapshot message carries the architecture as a number).
ARCHES = {"i686": 1, "x86_64": 2, "armv7l": 3, "aarch64": 4, "ppc": 5, "ppc64": 6,
          "ppc64le": 7, "s390x": 8, "mips": 9, "mips64": 10, "riscv32": 11, "riscv64": 12}
ARCH_NAMES = {v: k for k, v in ARCHES.items()}
NO_TIME = "0001-01-01T00:00:00Z"


def unix_time(value: str | None) -> int:
    if not value or value.startswith("0001-01-01"):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def lxd_time(seconds: int | None) -> str:
    if not seconds or seconds <= 0:
        return NO_TIME
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def root_pool(inst: dict[str, Any]) -> str:
    for dev in (inst.get("expanded_devices") or {}).values():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            return dev.get("pool", "")
    return ""


async def pool_driver(bus: Bus, project: str, pool: str) -> str:
    """The driver of ``pool`` here ("" when there is no such pool): btrfs pools on both
    ends move volumes as btrfs send streams, anything else by rsync."""
    if not pool:
        return ""
    try:
        reply = await bus.request("storage", "get", ObjectRequest(project=project, name=pool),
                                  timeout=PATH_TIMEOUT)
    except NotFound:
        return ""
    return str((reply.metadata or {}).get("driver") or "")


async def instance(bus: Bus, project: str, name: str) -> dict[str, Any]:
    reply = await bus.request("instance", "get", ObjectRequest(project=project, name=name),
                              timeout=PATH_TIMEOUT)
    return reply.metadata


async def volume_path(bus: Bus, project: str, inst: dict[str, Any],
                      snapshot: str | None = None) -> Path:
    msg = VolumePathRequest(project=project, pool=root_pool(inst),
                            kind=inst.get("type") or "container", name=inst["name"],
                            snapshot=snapshot)
    # A node-bound verb: the volume is on this host (our storage service's node).
    reply = await bus.request("storage", "volume_path", msg, node=bus.config.node,
                              timeout=PATH_TIMEOUT)
    return Path(VolumePathReply.model_validate(reply.metadata).path)


class Progress:
    """LXD's ``fs_progress`` text in the operation's metadata ("<volume>: <bytes> (<rate>)"),
    written at most once a second (each write is a KV put and an event)."""

    def __init__(self, handle: Any, key: str = "fs_progress") -> None:
        self.handle, self.key = handle, key
        self.volume = ""
        self.started = time.monotonic()
        self.last = 0.0

    def on(self, volume: str) -> "Progress":
        self.volume, self.started, self.last = volume, time.monotonic(), 0.0
        return self

    async def __call__(self, moved: int) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        rate = moved / max(now - self.started, 0.001)
        await self.handle.set_metadata(**{self.key: f"{self.volume}: {byte_size(moved)} "
                                                    f"({byte_size(int(rate))}/s)"})

