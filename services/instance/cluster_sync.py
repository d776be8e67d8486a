"""In a cluster: other nodes' records (instances, profiles, projects, snapshots) reach
this node's caches as they change.

Why: the instance service keeps its buckets in read caches fed by its own writes
(``Store(cache=True)``, made for a single writer). In a cluster every node writes the
records of the instances located on it, and any node a profile or project, so without
this a node would go on seeing another's instance that was deleted (a profile "in use"
by it) and never see one made since it started (names, project limits, ``used_by``,
profiles). A KV watch applies the other nodes' writes (and a record another node takes
over, a move's).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js.kv import KV_DEL, KV_PURGE

from shared import codec
from shared.state import Store


def apply(store: Store, key: str, value: dict[str, Any] | None, revision: int) -> None:
    """One change seen by the watch, applied when newer than what the cache holds (our
    own writes are there already at their revision; the watch delivers in order, so a
    stale echo is followed by what came after it)."""
    cached = store._cache.get(key)  # noqa: SLF001 (the cache this module keeps current)
    if cached is not None and cached[1] >= revision:
        return
    if value is None:
        store._cache.pop(key, None)  # noqa: SLF001
    else:
        store._remember(key, value, revision)  # noqa: SLF001


async def follow(store: Store, log: Any) -> None:
    """Watch the bucket for ever (restarted when the watch breaks, e.g. a NATS restart)."""
    while True:
        watcher = None
        try:
            watcher = await store.kv.watchall(include_history=False)
            async for entry in watcher:
                if entry is None:  # the current values are in: go on with the updates
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
                    apply(store, entry.key, None, entry.revision)
                else:
                    apply(store, entry.key, codec.decode(entry.value), entry.revision)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("watch of a KV bucket broke, restarting", bucket=store.bucket,
                        error=str(exc))
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()
        await asyncio.sleep(1.0)
