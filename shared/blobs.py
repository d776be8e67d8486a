"""Blobs in JetStream object stores: image files, uploads, large file transfers.

Large bodies never travel as one bus message: the sender puts them in an object store
(chunked by NATS itself, replicated like KV in a cluster) and passes the object's name in a
normal request. Buckets: ``images`` (owned by the image service) and ``transfers`` (a
staging area with a TTL, for uploads through the gateway and downloads to it).
"""

from __future__ import annotations

from pathlib import Path

import nats.js.errors as jse
from nats.js import api
from nats.js.object_store import ObjectStore

from .bus import Bus
from .errors import NotFound

TRANSFERS = "transfers"
TRANSFER_TTL = 3600.0


async def bucket(bus: Bus, name: str, ttl: float | None = None) -> ObjectStore:
    try:
        return await bus.js.object_store(name)
    except jse.BucketNotFoundError:
        return await bus.js.create_object_store(
            name, config=api.ObjectStoreConfig(
                bucket=name, ttl=ttl, storage=api.StorageType.FILE,
                replicas=bus.config.kv_replicas, description=f"corral {name}"))


async def transfers(bus: Bus) -> ObjectStore:
    return await bucket(bus, TRANSFERS, ttl=TRANSFER_TTL)


async def put_file(store: ObjectStore, name: str, path: Path) -> int:
    with open(path, "rb") as f:
        info = await store.put(name, f)
    return info.size


async def put_bytes(store: ObjectStore, name: str, data: bytes) -> int:
    info = await store.put(name, data)
    return info.size


async def get_file(store: ObjectStore, name: str, path: Path) -> None:
    try:
        with open(path, "wb") as f:
            await store.get(name, writeinto=f)
    except jse.ObjectNotFoundError as exc:
        path.unlink(missing_ok=True)
        raise NotFound(f"Blob {name} not found in {store._name}") from exc


async def get_bytes(store: ObjectStore, name: str) -> bytes:
    try:
        return bytes((await store.get(name)).data or b"")
    except jse.ObjectNotFoundError as exc:
        raise NotFound(f"Blob {name} not found") from exc


async def delete(store: ObjectStore, name: str) -> None:
    try:
        await store.delete(name)
    except jse.ObjectNotFoundError:
        pass
