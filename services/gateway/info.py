"""What the services add to ``GET /1.0``, cached for a few seconds.

``lxc`` calls ``GET /1.0`` before nearly every command: asking five services each time
would make it the slowest call of all. A stale answer is refreshed in the background; a
service that has never answered is asked again on every call (so a client right after
start-up does not see its extensions missing for seconds); a service that is down
contributes what it said last, or nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared import subjects
from shared.bus import Bus
from shared.models import Reply, ServerInfoRequest

# API extensions the gateway itself provides; services add theirs through their `info`.
GATEWAY_EXTENSIONS = ["operation_description", "event_lifecycle", "event_location",
                      "event_project", "event_lifecycle_requestor_address", "instances"]
# Seconds the services' part of GET /1.0 is served from cache before a refresh.
INFO_TTL = 2.0


class ServerInfo:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._cache: tuple[float, dict[str, Any], list[str]] | None = None
        self._refreshing = False
        self._by_service: dict[str, dict[str, Any]] = {}

    async def get(self) -> tuple[dict[str, Any], list[str]]:
        """The services' ``environment`` entries and the API extensions of all."""
        now = time.monotonic()
        if self._cache is None or len(self._by_service) < len(subjects.SERVICES):
            await self._refresh()
        elif now - self._cache[0] > INFO_TTL and not self._refreshing:
            self._refreshing = True
            asyncio.create_task(self._refresh())
        assert self._cache is not None
        return self._cache[1], self._cache[2]

    async def _refresh(self) -> None:
        try:
            replies = await asyncio.gather(
                *(self.bus.request(svc, "info", ServerInfoRequest(), timeout=1.0)
                  for svc in subjects.SERVICES), return_exceptions=True)
            for svc, reply in zip(subjects.SERVICES, replies, strict=True):
                # A service that is busy or restarting keeps what it said last time: an
                # API extension must not vanish for a moment (`lxc list` refuses to run
                # without `api_filtering`, which the instance service declares).
                if isinstance(reply, Reply):
                    self._by_service[svc] = reply.metadata or {}
            env: dict[str, Any] = {}
            extensions = list(GATEWAY_EXTENSIONS)
            for info in self._by_service.values():
                env.update(info.get("environment", {}))
                extensions += [e for e in info.get("api_extensions", [])
                               if e not in extensions]
            self._cache = (time.monotonic(), env, extensions)
        finally:
            self._refreshing = False
