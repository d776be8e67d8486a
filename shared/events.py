"""Events: LXD's JSON on ``corral.events.<type>.<project>.<entity>``, kept in a stream.

Events are JSON (not msgpack) because they are LXD's event objects, passed through to
``/1.0/events`` websockets byte for byte and readable by any NATS tool. The
``CORRAL_EVENTS`` stream keeps them (age and size limits from config) so a consumer that
was away can replay what it missed; plain subscribers see them live.
"""

from __future__ import annotations

import json
from typing import Any

import nats.js.errors as jse
from nats.js import api

from . import subjects
from .bus import Bus
from .models import Event, Requestor


async def ensure_stream(bus: Bus) -> api.StreamInfo:
    cfg = api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Corral events (LXD's lifecycle, operation and logging events)",
        subjects=[subjects.EVENTS_ALL],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=bus.config.events_max_age,
        max_bytes=bus.config.events_max_bytes,
        num_replicas=bus.config.kv_replicas,
    )
    try:
        await bus.js.stream_info(subjects.EVENTS_STREAM)
        return await bus.js.update_stream(cfg)
    except jse.NotFoundError:
        return await bus.js.add_stream(cfg)


class Events:
    def __init__(self, bus: Bus, location: str = "none") -> None:
        self.bus = bus
        self.location = location

    async def publish(self, type_: str, metadata: dict[str, Any], *, project: str = "default",
                      entity: str = "server") -> Event:
        event = Event(type=type_, metadata=metadata, project=project, location=self.location)
        data = json.dumps(event.model_dump(), separators=(",", ":")).encode()
        await self.bus.publish(subjects.event(type_, project, entity), data)
        return event

    async def lifecycle(self, action: str, source: str, *, project: str = "default",
                        context: dict[str, Any] | None = None,
                        requestor: Requestor | None = None) -> Event:
        """``instance-started`` and friends; the entity is the part before the first dash."""
        meta: dict[str, Any] = {"action": action, "source": source}
        if context:
            meta["context"] = context
        if requestor:
            meta["requestor"] = requestor.model_dump()
        entity = action.rsplit("-", 1)[0]
        return await self.publish("lifecycle", meta, project=project, entity=entity)

    async def logging(self, message: str, level: str, context: dict[str, Any],
                      service: str) -> Event:
        meta = {"message": message, "level": level, "context": context}
        return await self.publish("logging", meta, entity=service)
