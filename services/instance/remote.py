"""What the instance service asks other services: images, root volumes, NICs.

Why a module: the contracts (``shared/messages/*``) are other teams' APIs; keeping the
calls here keeps the create/start code readable and the timeouts in one place.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable

from shared import presence
from shared.bus import Bus
from shared.errors import Unavailable
from shared.messages.image import ResolveRequest
from shared.messages.network import (
    NicConfigReply,
    NicConfigRequest,
    NicLimitsRequest,
    NicReleaseRequest,
)
from shared.messages.storage import VolumeFromImageRequest, VolumePathReply, VolumeRequest

# Unpacking an image into a new pool can take a while the first time: the deadline of a
# volume made from an image is long, but the storage process is watched meanwhile (see
# ``watched``), so its death ends the wait within seconds. Deleting or renaming a volume
# is a subvolume operation: seconds at most.
VOLUME_TIMEOUT = 300.0
VOLUME_QUICK_TIMEOUT = 30.0
NIC_TIMEOUT = 30.0
# Watching starts after this many seconds; then the callee is pinged every WATCH_EVERY s
# and declared gone after WATCH_GRACE s without a responder.
WATCH_AFTER = 2.0
WATCH_EVERY = 1.0
WATCH_GRACE = 4.0
# An idempotent request still unanswered after this many seconds, while its callee
# answers pings, is sent again: its answer may have been lost (a reply the server refused
# after a restart, for want of the response permission it had given the first delivery).
RESEND_AFTER = 10.0


class Remote:
    def __init__(self, bus: Bus, node: str) -> None:
        self.bus = bus
        self.node = node

    async def resolve_image(self, project: str, source: dict[str, Any],
                            instance_type: str = "container") -> dict[str, Any]:
        req = ResolveRequest(project=project, alias=source.get("alias"),
                             fingerprint=source.get("fingerprint"),
                             instance_type=instance_type)
        reply = await self.bus.request("image", "resolve", req)
        return reply.metadata or {}

    async def volume_from_image(self, project: str, pool: str, name: str, fp: str,
                                kind: str = "container") -> str:
        req = VolumeFromImageRequest(project=project, pool=pool, name=name, fingerprint=fp,
                                     kind=kind, request_id=uuid.uuid4().hex)
        reply = await self.watched("storage", lambda: self.bus.request(
            "storage", "volume_from_image", req, node=self.node, timeout=VOLUME_TIMEOUT),
            f"making the root volume of {name!r}")
        return VolumePathReply.model_validate(reply.metadata).path

    async def watched(self, svc: str, send: Callable[[], Awaitable[Any]], what: str) -> Any:
        """An idempotent node request with a long deadline, whose callee is watched.

        ``send()`` makes the request. The callee's micro instance on this node is looked up
        before it goes out; if it stops answering pings (its process died, even if a new one
        started meanwhile), this ends with a 503 saying so instead of waiting out the
        deadline. If our bus connection came back (a nats-server restart) while waiting,
        the answer may have been lost with the server: the request is sent again (the
        callee answers a repeat with the same result), and again every RESEND_AFTER
        seconds without an answer from a callee that is alive (a reply can also be lost
        after the reconnect: a repeat is cheap, it waits on the same work).
        """
        service = f"corral-{svc}"
        nc = self.bus.nc
        reconnects = nc.stats["reconnects"] if nc is not None else 0
        # Who will answer, asked first (a local ping: a millisecond): a callee that dies on
        # receiving the request could not answer a ping sent beside it.
        callee = await presence.instance_on(self.bus, service, self.node)
        call = asyncio.ensure_future(send())
        try:
            done, _ = await asyncio.wait({call}, timeout=WATCH_AFTER)
            if done:
                return call.result()
            missing = 0.0
            waited = WATCH_AFTER
            while True:
                done, _ = await asyncio.wait({call}, timeout=WATCH_EVERY)
                if done:
                    return call.result()
                waited += WATCH_EVERY
                now = nc.stats["reconnects"] if nc is not None else 0
                if nc is not None and nc.is_connected and (
                        now != reconnects or waited >= RESEND_AFTER):
                    reconnects = now
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)
                    callee = await presence.instance_on(self.bus, service, self.node)
                    call = asyncio.ensure_future(send())
                    missing, waited = 0.0, 0.0
                    continue
                if callee is None or await presence.alive(self.bus, service, callee):
                    missing = 0.0
                    continue
                missing += WATCH_EVERY
                if missing >= WATCH_GRACE:
                    raise Unavailable(f"The {svc} service stopped while {what} (its process "
                                      "is gone)")
        finally:
            if not call.done():
                call.cancel()
            await asyncio.gather(call, return_exceptions=True)

    async def volume_delete(self, project: str, pool: str, name: str,
                            kind: str = "container") -> None:
        req = VolumeRequest(project=project, pool=pool, kind=kind, name=name)
        await self.bus.request("storage", "volume_delete", req, node=self.node,
                               timeout=VOLUME_QUICK_TIMEOUT)

    async def volume_quota(self, project: str, pool: str, name: str, size: str,
                           kind: str = "container") -> None:
        """Apply a root disk ``size`` to the volume now (400 from a pool without quotas)."""
        from shared.messages.storage import VolumeQuotaRequest

        req = VolumeQuotaRequest(project=project, pool=pool, kind=kind, name=name, size=size)
        await self.bus.request("storage", "volume_quota", req, node=self.node,
                               timeout=VOLUME_QUICK_TIMEOUT)

    async def volume_rename(self, project: str, pool: str, name: str, new: str) -> str:
        from shared.messages.storage import VolumeRenameRequest

        req = VolumeRenameRequest(project=project, pool=pool, name=name, new_name=new)
        reply = await self.bus.request("storage", "volume_rename", req, node=self.node,
                                       timeout=VOLUME_QUICK_TIMEOUT)
        return VolumePathReply.model_validate(reply.metadata).path

    async def nic_config(self, project: str, instance: str, index: int,
                         device: dict[str, str], host_name: str | None,
                         hwaddr: str | None) -> NicConfigReply:
        req = NicConfigRequest(project=project, instance=instance, index=index,
                               device=device, host_name=host_name, hwaddr=hwaddr)
        reply = await self.watched("network", lambda: self.bus.request(
            "network", "nic_config", req, node=self.node, timeout=NIC_TIMEOUT),
            f"configuring NIC {index} of {instance!r}")
        return NicConfigReply.model_validate(reply.metadata)

    async def nic_limits(self, project: str, host_name: str, device: dict[str, str]) -> None:
        req = NicLimitsRequest(project=project, host_name=host_name, device=device)
        await self.bus.request("network", "nic_limits", req, node=self.node,
                               timeout=NIC_TIMEOUT)

    async def nic_release(self, project: str, network: str, hwaddrs: list[str],
                          host_names: list[str]) -> None:
        req = NicReleaseRequest(project=project, network=network, hwaddrs=hwaddrs,
                                host_names=host_names)
        await self.bus.request("network", "nic_release", req, node=self.node,
                               timeout=NIC_TIMEOUT)
