"""A gateway's live copy of a small, cluster-wide KV bucket (server config, trust store).

Several gateways may serve the same cluster and any of them may write these buckets, so
none can trust a cache of its own writes alone (``Store(cache=True)`` is for single
writers). Each keeps a mirror fed by a KV watch instead: every write, by whichever
gateway, reaches every mirror within a round trip and fires ``on_change``, which is how a
``core.https_address`` change rebinds the listener in every gateway at once. A watch that
breaks (nats-server restart) is started again and replays the bucket's current values.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable

from nats.js.kv import KV_DEL, KV_PURGE

from shared import codec
from shared.bus import Bus
from shared.log import get_logger
from shared.state import Store

log = get_logger(component="gateway")

OnChange = Callable[[str, dict[str, Any] | None], Awaitable[None]]


class KVMirror:
    def __init__(self, bus: Bus, bucket: str, description: str,
                 on_change: OnChange | None = None) -> None:
        self.store = Store(bus, bucket, history=1, description=description)
        self.values: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, int] = {}
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> "KVMirror":
        """Open (or create) the bucket and return once the current values are loaded."""
        await self.store.open()
        loaded = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(loaded))
        await asyncio.wait_for(asyncio.shield(loaded), 10)
        return self

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self, loaded: asyncio.Future[None]) -> None:
        while True:
            watcher = None
            try:
                watcher = await self.store.kv.watchall()
                seen: set[str] = set()
                initial = True
                async for entry in watcher:
                    if entry is None:  # the current values are all in
                        if initial:
                            for gone in set(self.values) - seen:
                                await self._apply(gone, None, 0)
                            initial = False
                            if not loaded.done():
                                loaded.set_result(None)
                        continue
                    seen.add(entry.key)
                    if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
                        await self._apply(entry.key, None, entry.revision)
                    else:
                        await self._apply(entry.key, codec.decode(entry.value),
                                          entry.revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch of a KV bucket broke, restarting", bucket=self.store.bucket,
                            error=str(exc))
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(1.0)

    async def _apply(self, key: str, value: dict[str, Any] | None, revision: int) -> None:
        if value is None:
            if self.values.pop(key, None) is None:
                return
            self.revisions.pop(key, None)
        else:
            if self.revisions.get(key, -1) >= revision and key in self.values:
                return  # our own write, already applied
            self.values[key] = value
            self.revisions[key] = revision
        if self.on_change is not None:
            try:
                await self.on_change(key, value)
            except Exception as exc:  # one bad value must not stop the mirror
                log.error("applying a KV change failed", bucket=self.store.bucket, key=key,
                          error=str(exc))

    def remember(self, key: str, value: dict[str, Any] | None, revision: int) -> None:
        """Record our own write now (the watch echoes it a moment later)."""
        if value is None:
            self.values.pop(key, None)
            self.revisions.pop(key, None)
        else:
            self.values[key] = value
            self.revisions[key] = revision
