"""State in JetStream KV: one bucket per owning service, compare-and-set on revisions.

Values are msgpack dicts. ``update`` only succeeds against the revision the caller read, so
two writers cannot silently overwrite each other (no in-process locks). A service that is
the only writer of its bucket may keep a local read cache (``cache=True``): it is loaded
when the bucket is opened and kept current by the service's own writes, so lists never
cost one bus round trip per entry.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
from typing import Any

import nats.errors as nats_errors
import nats.js.errors as jse
from nats.js import api
from nats.js.kv import KeyValue

from . import codec
from .bus import Bus
from .errors import Conflict, CorralError, NotFound, Unavailable

# Seconds a Store.open waits for JetStream's API to answer (see Store.open).
OPEN_PATIENCE = 30.0


class Store:
    def __init__(self, bus: Bus, bucket: str, *, history: int = 5, cache: bool = False,
                 description: str = "") -> None:
        self.bus = bus
        self.bucket = bucket
        self.history = history
        self.description = description
        self._kv: KeyValue | None = None
        self._use_cache = cache
        self._cache: dict[str, tuple[dict[str, Any], int]] = {}
        self._follower: asyncio.Task[None] | None = None

    async def open(self) -> "Store":
        # JetStream's API may not answer for a while: a cluster electing stream leaders
        # after a node came back, a nats-server just restarted. A service starting then
        # waits (bounded) instead of dying on its first timeout.
        deadline = asyncio.get_running_loop().time() + OPEN_PATIENCE
        delay = 0.25
        while True:
            try:
                self._kv = await self._open_bucket()
                break
            except (TimeoutError, nats_errors.TimeoutError, jse.ServiceUnavailableError,
                    nats_errors.NoRespondersError):
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self._use_cache:
            self._cache = {k: v for k, v in (await self._load_all()).items()}
            if self.bus.config.cluster and self._follower is None:
                # other nodes write this bucket too: follow their writes (kv_follow.py)
                from .kv_follow import follow

                self._follower = asyncio.create_task(follow(self))
        return self

    async def _open_bucket(self) -> KeyValue:
        js = self.bus.js
        try:
            return await js.key_value(self.bucket)
        except jse.BucketNotFoundError:
            return await js.create_key_value(
                bucket=self.bucket,
                history=self.history,
                storage=api.StorageType.FILE,
                replicas=self.bus.config.kv_replicas,
                description=self.description or f"corral {self.bucket}",
            )

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError(f"store {self.bucket} not opened")
        return self._kv

    async def get(self, key: str) -> tuple[dict[str, Any], int] | None:
        """The value and its revision, or None."""
        if self._use_cache:
            return self._cache.get(key)
        return await self._get(key)

    async def require(self, key: str, what: str) -> tuple[dict[str, Any], int]:
        found = await self.get(key)
        if found is None:
            raise NotFound(f"{what} not found")
        return found

    async def _get(self, key: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await self.kv.get(key)
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            return None
        except jse.InvalidKeyError:  # a name no key can have (a URL's "a:b") names nothing
            return None
        except jse.Error as exc:
            raise Unavailable(f"state store {self.bucket} unavailable: {exc}") from exc
        if entry.value is None:
            return None
        return codec.decode(entry.value), entry.revision

    async def create(self, key: str, value: dict[str, Any], what: str = "Entry") -> int:
        """Add a key that must not exist yet (409 otherwise)."""
        try:
            rev = await self.kv.create(key, codec.encode(value))
        except jse.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{what} already exists") from exc
        self._remember(key, value, rev)
        return rev

    async def update(self, key: str, value: dict[str, Any], revision: int) -> int:
        """Write only if the entry is still at ``revision`` (409 when someone else wrote)."""
        try:
            rev = await self.kv.update(key, codec.encode(value), last=revision)
        except jse.KeyWrongLastSequenceError as exc:
            if self._use_cache:  # our cache is stale: reload this key
                fresh = await self._get(key)
                if fresh:
                    self._cache[key] = fresh
            raise Conflict(f"{key} was changed concurrently, retry") from exc
        self._remember(key, value, rev)
        return rev

    async def put(self, key: str, value: dict[str, Any]) -> int:
        rev = await self.kv.put(key, codec.encode(value))
        self._remember(key, value, rev)
        return rev

    async def delete(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            pass
        self._cache.pop(key, None)

    async def keys(self) -> list[str]:
        if self._use_cache:
            return sorted(self._cache)
        return sorted((await self._load_all()).keys())

    async def items(self) -> dict[str, dict[str, Any]]:
        if self._use_cache:
            return {k: v for k, (v, _rev) in sorted(self._cache.items())}
        return {k: v for k, (v, _rev) in (await self._load_all()).items()}

    async def forget_deleted(self, older_than: float = 60.0) -> None:
        """Drop the delete markers of keys deleted more than ``older_than`` s ago, so the
        exact key list (see ``_all_keys``) stays as short as the live keys."""
        await self.kv.purge_deletes(olderthan=int(older_than))

    def cached(self) -> list[dict[str, Any]]:
        """The cached values, without awaiting (only for ``cache=True`` stores)."""
        assert self._use_cache, f"store {self.bucket} keeps no cache"
        return [v for v, _rev in self._cache.values()]

    def cached_revision(self, key: str) -> int | None:
        """The revision of a cached value (a reply cache keys on it), None when absent."""
        hit = self._cache.get(key)
        return None if hit is None else hit[1]

    async def _all_keys(self) -> list[str]:
        """Every key that has (or had) a value.

        Read from the stream's per-subject state, not with nats-py's ``kv.keys()``: that
        one watches the bucket and stops at the first "no more pending" it believes, which
        under load can come before every key was delivered; a cache loaded that way
        silently missed records after a restart (a profile "not found", and a reconcile
        that would take a live container for one without a record). Deleted keys are
        listed too (their delete marker is a message): reading them finds nothing.
        """
        prefix = f"$KV.{self.bucket}."
        try:
            info = await self.bus.js.stream_info(f"KV_{self.bucket}",
                                                 subjects_filter=f"{prefix}>")
        except jse.Error:
            try:
                return await self.kv.keys()
            except jse.NoKeysError:
                return []
        return [s[len(prefix):] for s in (info.state.subjects or {})
                if s.startswith(prefix)]

    async def _load_all(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Every entry, from the exact key list of the stream's state (nats-py's watch may
        miss keys under load: an operation just made was missing from GET /1.0/operations)."""
        keys = await self._all_keys()
        if not keys:
            return {}
        values = await asyncio.gather(*(self._get(k) for k in keys))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def _remember(self, key: str, value: dict[str, Any], rev: int) -> None:
        if self._use_cache:
            self._cache[key] = (value, rev)


# Retries of a compare-and-set that lost a race: the first after ~5 ms, doubling up to
# ~0.4 s, each a random point of the window ("full jitter"). Without the wait, N writers
# that read the same revision retry in lockstep and all but one lose again every round;
# with it, 50 writers of one key settle in well under a second.
CAS_ATTEMPTS = 12
CAS_BASE_DELAY = 0.005
CAS_MAX_DELAY = 0.4


def backoff_delay(attempt: int, base: float = CAS_BASE_DELAY, cap: float = CAS_MAX_DELAY
                  ) -> float:
    """The wait before retry number ``attempt`` (0-based): uniform in [0, min(cap,
    base * 2**attempt)] ("full jitter", so racing writers spread out instead of colliding
    again on the same beat)."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


async def mutate(store: Store, key: str, fn, what: str = "Entry",
                 attempts: int = CAS_ATTEMPTS) -> dict[str, Any]:
    """Read-modify-write with compare-and-set, retrying when another writer got there first.

    ``fn(value) -> new value`` must be pure (it may run more than once). Each retry waits
    a jittered, growing delay (:func:`backoff_delay`); only after ``attempts`` lost races
    is the caller told 409.
    """
    for attempt in range(attempts):
        value, rev = await store.require(key, what)
        new = fn(dict(value))
        try:
            await store.update(key, new, rev)
            return new
        except Conflict:
            if attempt + 1 < attempts:
                await asyncio.sleep(backoff_delay(attempt))
    raise CorralError(f"{what} is being changed by someone else, try again", 409)


_PLAIN = re.compile(r"^[-_a-zA-Z0-9][-_=a-zA-Z0-9]*$")


def key(*parts: str) -> str:
    """A KV key from parts (``project``, ``name``): plain names stay readable, anything
    else (dots, unicode, ...) is base64url-encoded behind a ``=`` so every name is a valid,
    unique key."""
    out = []
    for part in parts:
        if _PLAIN.match(part):
            out.append(part)
        else:
            out.append("=" + base64.urlsafe_b64encode(part.encode()).decode().rstrip("="))
    return ".".join(out)
