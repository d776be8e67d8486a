"""One-time secrets for private images: LXD's image download tokens.

``POST /1.0/images/<fp>/secret`` starts an operation of class ``token`` whose metadata holds
``secret`` and ``fingerprint`` (LXD's shape; the 5.0 client reads ``metadata.secret`` from
the operation it gets back). An untrusted client that presents ``?secret=`` on ``GET
/1.0/images/<fp>`` or ``GET /1.0/images/<fp>/export`` may read that one image.

How long a secret works, and why so: LXD cancels the token operation at its first use, yet
a server pulling a private image needs two reads with the same secret (the record, then the
files: ``GetPrivateImage`` then ``GetPrivateImageFile``). LXD only gets away with it
because a cancelled operation stays listed for 5 s. Here that is explicit and tighter: the
first use cancels the operation (so ``lxc operation list`` shows it ``Cancelled``, as LXD),
and after it the secret allows each of the two reads (``info``, ``export``) once, within
``GRACE`` seconds. Replaying either read is a 404, as is any read once the operation was
cancelled by hand (``lxc operation delete``) before it was used.

Secrets live in this process's memory only: a restarted image service fails the token
operations of its former self (``Operations.claim``) and the secrets with them, as LXD
forgets its tokens on restart.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets as random
import time
from dataclasses import dataclass, field
from typing import Any

from shared.api import url
from shared.events import Events
from shared.models import Operation, Requestor

USES = ("info", "export")  # the two reads a secret allows, each once
GRACE = 60.0  # seconds after the first use during which the other read may follow


@dataclass
class _Secret:
    project: str
    fingerprint: str
    value: str
    op_id: str = ""
    used: set[str] = field(default_factory=set)
    consumed_at: float | None = None  # the first use (the operation ends then)
    spent: asyncio.Event = field(default_factory=asyncio.Event)


class Secrets:
    """The live secrets of this image service, each backed by its token operation."""

    def __init__(self, operations: Any, events: Events) -> None:
        self.operations = operations
        self.events = events
        self._live: dict[str, _Secret] = {}  # operation id -> secret

    async def issue(self, project: str, fingerprint: str,
                    requestor: Requestor | None = None) -> Operation:
        """Start the token operation of a new secret for ``fingerprint`` (a full one)."""
        entry = _Secret(project, fingerprint, random.token_hex(32))

        async def pending(_handle: Any) -> None:
            try:
                await entry.spent.wait()
            finally:
                if entry.consumed_at is None:  # cancelled by hand (or the service stops)
                    self._live.pop(entry.op_id, None)
            # LXD cancels a token at its first use: end as Cancelled, not Success.
            raise asyncio.CancelledError

        op = await self.operations.start(
            "Image download token", pending, cls="token", may_cancel=True, project=project,
            resources={"images": [url("images", fingerprint, project)]},
            metadata={"secret": entry.value, "fingerprint": fingerprint})
        entry.op_id = op.id
        self._live[op.id] = entry
        await self.events.lifecycle("image-secret-created", url("images", fingerprint, project),
                                    project=project, requestor=requestor)
        return op

    def use(self, project: str, fingerprint: str, secret: str, use: str) -> bool:
        """Whether ``secret`` lets its holder make the read ``use`` of this image now; a
        yes spends that read (and, the first time, ends the token operation)."""
        if use not in USES or not secret:
            return False
        now = time.monotonic()
        for op_id, entry in list(self._live.items()):
            if entry.consumed_at is not None and now - entry.consumed_at > GRACE:
                del self._live[op_id]  # the grace is over: forget it
                continue
            if entry.project != project or entry.fingerprint != fingerprint:
                continue
            if not hmac.compare_digest(entry.value.encode(), secret.encode()):
                continue
            if use in entry.used:
                return False
            entry.used.add(use)
            if entry.consumed_at is None:
                entry.consumed_at = now
                entry.spent.set()
            if entry.used >= set(USES):
                del self._live[op_id]
            return True
        return False
