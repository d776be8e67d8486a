"""What the instance service asks other services: images, root volumes, NICs.

Why a module: the contracts (``shared/messages/*``) are other teams' APIs; keeping the
calls here keeps the create/start code readable and the timeouts in one place.
"""

from __future__ import annotations

from typing import Any

from shared.bus import Bus
from shared.messages.image import ResolveRequest
from shared.messages.network import NicConfigReply, NicConfigRequest, NicLimitsRequest
from shared.messages.storage import VolumeFromImageRequest, VolumePathReply, VolumeRequest

# Unpacking an image into a new pool can take a while the first time.
VOLUME_TIMEOUT = 300.0
NIC_TIMEOUT = 30.0


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
                                     kind=kind)
        reply = await self.bus.request("storage", "volume_from_image", req, node=self.node,
                                       timeout=VOLUME_TIMEOUT)
        return VolumePathReply.model_validate(reply.metadata).path

    async def volume_delete(self, project: str, pool: str, name: str,
                            kind: str = "container") -> None:
        req = VolumeRequest(project=project, pool=pool, kind=kind, name=name)
        await self.bus.request("storage", "volume_delete", req, node=self.node,
                               timeout=VOLUME_TIMEOUT)

    async def volume_rename(self, project: str, pool: str, name: str, new: str) -> str:
        from shared.messages.storage import VolumeRenameRequest

        req = VolumeRenameRequest(project=project, pool=pool, name=name, new_name=new)
        reply = await self.bus.request("storage", "volume_rename", req, node=self.node,
                                       timeout=VOLUME_TIMEOUT)
        return VolumePathReply.model_validate(reply.metadata).path

    async def nic_config(self, project: str, instance: str, index: int,
                         device: dict[str, str], host_name: str | None,
                         hwaddr: str | None) -> NicConfigReply:
        req = NicConfigRequest(project=project, instance=instance, index=index,
                               device=device, host_name=host_name, hwaddr=hwaddr)
        reply = await self.bus.request("network", "nic_config", req, node=self.node,
                                       timeout=NIC_TIMEOUT)
        return NicConfigReply.model_validate(reply.metadata)

    async def nic_limits(self, project: str, host_name: str, device: dict[str, str]) -> None:
        req = NicLimitsRequest(project=project, host_name=host_name, device=device)
        await self.bus.request("network", "nic_limits", req, node=self.node,
                               timeout=NIC_TIMEOUT)
