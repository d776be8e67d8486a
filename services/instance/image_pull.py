"""Creating an instance from an image server (``lxc launch remote:alias``): the pull.

Why inside the create operation: the image may take minutes to download, and LXD does it
in the instance's operation too (``lxc launch`` shows "Retrieving image: rootfs: 42%").
The instance service asks the image service (``image.pull``, cached: true) and waits for
that operation, copying its ``download_progress`` into the create operation's metadata
(the record in the ``operations`` bucket, and an operation event, which is what ``lxc``
watches), then creates the instance from the local fingerprint. A failed pull fails the
create before any volume exists: the reserved record is dropped by the create's undo.

Waiting: when the image is local already, ``image.pull`` answers with its operation
ended, and nothing is watched. Otherwise the operation's record in the ``operations`` KV
bucket is watched (each progress write and the end arrive as they happen): a launch must
not lose a polling interval after a pull that took milliseconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE

from shared import codec
from shared.errors import BadRequest, CorralError, Unavailable
from shared.events import Events
from shared.log import operation_id
from shared.messages.image import PullRequest, PullSource
from shared.operations import WATCH_CONSUMER_IDLE
from shared.state import Store, mutate

from .context import Context

PULL_TIMEOUT = 3600.0  # a big image on a slow link; the image service's death ends it sooner
WATCH_STALL = 5.0  # a watch may stall silently across a reconnect: then read the key
FINAL = ("Success", "Failure", "Cancelled")


def is_pull(source: dict[str, Any]) -> bool:
    return bool(source.get("server")) or source.get("mode") == "pull"


def check(source: dict[str, Any]) -> None:
    """The fast checks of a pull source, answered before the create's operation."""
    if not source.get("server"):
        raise BadRequest("A pull source needs source.server (the image server's URL)")
    if not (source.get("alias") or source.get("fingerprint")):
        raise BadRequest("No image given: set source.alias or source.fingerprint")
    if source.get("mode", "pull") != "pull":
        raise BadRequest(f"Invalid source mode {source.get('mode')!r} for an image server: "
                         "use pull")


async def pull(ctx: Context, project: str, source: dict[str, Any], kind: str
               ) -> dict[str, Any]:
    """Make the image local (``project`` is the effective project for images) and return
    it as ``image.resolve`` does."""
    bus = ctx.remote.bus
    req = PullRequest(project=project, request_id=uuid.uuid4().hex, cached=True,
                      instance_type=kind, source=PullSource(
                          server=source["server"], protocol=source.get("protocol") or "lxd",
                          alias=source.get("alias") or None,
                          fingerprint=source.get("fingerprint") or None,
                          certificate=source.get("certificate") or "",
                          secret=source.get("secret") or "",
                          credentials=source.get("credentials") or "",
                          image_type=source.get("image_type") or ""))
    reply = await bus.request("image", "pull", req, timeout=120)
    op_id = (reply.operation or {}).get("id")
    if not op_id:
        raise Unavailable("The image service started no pull operation")
    final = reply.operation or {}
    if final.get("status") not in FINAL:  # a download: follow it
        final = await _follow(bus, op_id, operation_id.get())
    if final.get("status") != "Success":
        err = final.get("err") or final.get("status")
        name = source.get("alias") or source.get("fingerprint")
        raise CorralError(f"Failed getting image {name!r} from {source['server']}: {err}",
                          400)
    fp = (final.get("metadata") or {}).get("fingerprint")
    return await ctx.remote.resolve_image(project, {"fingerprint": fp}, kind)


async def _follow(bus: Any, op_id: str, mine: str | None) -> dict[str, Any]:
    """Wait for the pull operation; mirror its progress into our operation ``mine``."""
    ops = await Store(bus, "operations").open()
    events = Events(bus)
    shown: list[str | None] = [None]
    deadline = time.monotonic() + PULL_TIMEOUT

    async def seen(op: dict[str, Any]) -> bool:
        text = (op.get("metadata") or {}).get("download_progress")
        if mine and text and text != shown[0]:
            shown[0] = text
            await _mirror(ops, events, mine, text)
        return op.get("status") in FINAL

    while time.monotonic() < deadline:
        try:
            watcher = await ops.kv.watch(op_id, inactive_threshold=WATCH_CONSUMER_IDLE)
        except Exception:  # the bus is away (a nats-server restart): try again
            await asyncio.sleep(0.25)
            continue
        try:
            while time.monotonic() < deadline:
                try:
                    entry = await watcher.updates(timeout=WATCH_STALL)
                except nats.errors.TimeoutError:
                    found = await ops.get(op_id)
                    if found is None:
                        raise Unavailable("The image pull operation vanished") from None
                    if await seen(found[0]):
                        return found[0]
                    continue
                if entry is None:  # the end of the initial values
                    continue
                if entry.operation in (KV_DEL, KV_PURGE):
                    raise Unavailable("The image pull operation vanished")
                op = codec.decode(entry.value)
                if await seen(op):
                    return op
        except CorralError:
            raise
        except Exception:  # the watch broke under us: watch again (the KV keeps the state)
            await asyncio.sleep(0.25)
        finally:
            try:
                await watcher.stop()
            except Exception:
                pass
    raise Unavailable(f"The image pull did not end within {PULL_TIMEOUT:.0f} s")


async def _mirror(ops: Store, events: Events, op_id: str, text: str) -> None:
    def put(rec: dict[str, Any]) -> dict[str, Any]:
        return {**rec, "metadata": {**(rec.get("metadata") or {}),
                                    "download_progress": text}}

    try:
        rec = await mutate(ops, op_id, put, "Operation")
        public = {k: v for k, v in rec.items() if k not in ("project", "owner")}
        await events.publish("operation", public, project=rec.get("project", "default"),
                             entity="operation")
    except Exception:  # progress is a nicety: never fail a launch over it
        pass
