"""In a cluster: a cached store follows the other nodes' writes to its bucket.

Why: a service keeps its buckets in read caches fed by its own writes
(``Store(cache=True)``, made for a single writer). In a cluster every node's replica of a
service writes the same buckets: the instance service the records of the instances
located on its node, any node's image service an image or an alias, any node a profile,
a network or a pool. Without this a node goes on seeing what another deleted (a profile
"in use" by a deleted instance) and never sees what another made since it started (an
image uploaded through another node is "not found" here). A KV watch applies the other
writers' changes; standalone (one writer) nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js.kv import KV_DEL, KV_PURGE

from . import codec
from .log import get_logger

log = get_logger()


def apply(store: Any, key: str, value: dict[str, Any] | None, revision: int) -> None:
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


async def follow(store: Any) -> None:
    """Watch ``store``'s bucket for ever (restarted when the watch breaks, e.g. a NATS
    restart). ``store``: a ``shared.state.Store`` (not imported: it imports this)."""
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
