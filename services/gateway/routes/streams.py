"""``/1.0/operations/<id>/websocket?secret=``: bridge one websocket to its bus streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Any

from aiohttp import WSMsgType, web

from shared import streams, subjects
from shared.errors import Forbidden
from shared.models import OperationStatus

from ..routing import Context
from .migration import secrets_of


class Secrets:
    """The websocket secrets (``fds``) of running operations, from their events.

    Why: each websocket of an exec read the operation's record from the KV first (a
    JetStream round trip each, four per ``lxc exec``). The service publishes the
    operation's "created" event before it answers the request, so by the time a client
    connects, this gateway has usually seen the secrets; a miss (the first exec after a
    start, another gateway's operation, an event not handled yet) reads the record as
    before. A finished operation is forgotten here, so it is checked against its record;
    its final event goes to ``Operations.remember_final`` (the exit code read next).
    """

    LIMIT = 4096
    # How long (seconds) the 202's copy of a started operation answers its reads: the one
    # read it is for (``lxc exec`` reads the operation once its websockets are up) comes
    # within milliseconds; past that the record is read, whatever became of this watch.
    STARTED_TTL = 5.0

    def __init__(self) -> None:
        self._fds: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._started: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        # Websockets to close when their operation ends (migrations: a killed service
        # never sends EOF, and the peer server must not wait on the socket for ever).
        self.closers: dict[str, set[Any]] = {}
        self._sub: Any = None
        self._ops: Any = None
        self._lock = asyncio.Lock()

    async def watch(self, gw: Context) -> None:
        if self._sub is not None:
            return
        async with self._lock:
            if self._sub is None:
                self._ops = gw.ops
                self._sub = await gw.bus.subscribe(
                    f"{subjects.PREFIX}.events.operation.*.operation", self._on_event)

    async def _on_event(self, msg: Any) -> None:
        final = any(s in msg.data for s in FINAL_MARKS)
        if not final and b'"fds"' not in msg.data:
            return
        try:
            op = json.loads(msg.data)["metadata"]
            op_id, fds = op["id"], (op.get("metadata") or {}).get("fds")
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if op.get("status") in OperationStatus.FINAL:
            # Its exit code is read next (lxc exec): answer that from memory too.
            self._started.pop(op_id, None)
            self._ops.remember_final(op)
            for close in list(self.closers.get(op_id, ())):
                close()
        if op.get("status") in OperationStatus.FINAL or not isinstance(fds, dict):
            self._fds.pop(op_id, None)
            return
        self._fds[op_id] = fds
        while len(self._fds) > self.LIMIT:
            self._fds.popitem(last=False)

    def get(self, op_id: str) -> dict[str, str] | None:
        return self._fds.get(op_id)

    def keep(self, op_id: str, fds: dict[str, str], op: dict[str, Any] | None = None
             ) -> None:
        """The fds of an operation this gateway saw started (its POST's reply), and the
        operation as the reply showed it (see :meth:`started`)."""
        self._fds[op_id] = fds
        while len(self._fds) > self.LIMIT:
            self._fds.popitem(last=False)
        if op is not None:
            self._started[op_id] = (time.monotonic(), op)
            while len(self._started) > self.LIMIT:
                self._started.popitem(last=False)

    def started(self, op_id: str) -> dict[str, Any] | None:
        """The running operation as its 202 showed it, while no final event came for it
        and for STARTED_TTL seconds; else None (read the record).

        Why it is safe for ``lxc exec``'s read (it registers its event handler, then
        reads the operation once): the final record is written before its event, and
        this watch handles each event before the gateway can have relayed the same event
        to the client (the relay writes in a later loop turn). So a client that already
        got the final event gets the final operation here (``remember_final``); one that
        did not gets Running and then the final event on its handler, as from LXD.
        """
        hit = self._started.get(op_id)
        if hit is None:
            return None
        if time.monotonic() - hit[0] > self.STARTED_TTL:
            self._started.pop(op_id, None)
            return None
        return dict(hit[1])


FINAL_MARKS = tuple(f'"status":"{s}"'.encode() for s in OperationStatus.FINAL)
_secrets = Secrets()


async def keep_fds(gw: Context, op: dict[str, Any] | None) -> None:
    """Keep the websocket secrets of an operation whose start this gateway relays (an
    exec's or console's reply), for the websockets its client opens next.

    Why: the service posts the operation's events without waiting for them (its reply
    does not wait for JetStream), so the "created" event may reach us after the client's
    first websocket; the reply carries the same fds and always comes first. The final
    event still removes them (the watch is started here if it was not).
    """
    fds = ((op or {}).get("metadata") or {}).get("fds")
    if not isinstance(fds, dict) or not op or not _valid_op_id(op.get("id")):
        return
    await _secrets.watch(gw)
    _secrets.keep(op["id"], fds, op if op.get("status") == "Running" else None)


def started_operation(op_id: str) -> dict[str, Any] | None:
    """A running exec's or console's operation as its 202 showed it (Secrets.started)."""
    return _secrets.started(op_id)


def _valid_op_id(op_id: Any) -> bool:
    return isinstance(op_id, str) and 0 < len(op_id) <= 64


async def _fds_of(gw: Context, op_id: str) -> dict[str, Any]:
    await _secrets.watch(gw)
    fds = _secrets.get(op_id)
    if fds is None:
        op = await gw.ops.get(op_id)
        fds = (op.get("metadata") or {}).get("fds") or secrets_of(op.get("metadata"))
    return fds


async def websocket(gw: Context, request: web.Request) -> web.StreamResponse:
    op_id = request.match_info["id"]
    fds = await _fds_of(gw, op_id)
    secret = request.query.get("secret", "")
    fd = next((name for name, s in fds.items() if secret and s == secret), None)
    if fd is None:
        raise Forbidden("Wrong or missing websocket secret for this operation")
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    closer = None
    if "fs" in fds:  # a migration's (exec's are numbers and control): it ends with its
        # operation (see Secrets)
        def closer() -> None:
            asyncio.ensure_future(ws.close())
        _secrets.closers.setdefault(op_id, set()).add(closer)
    out: asyncio.Queue[Any] = asyncio.Queue()

    async def on_out(msg: Any) -> None:
        out.put_nowait(msg)

    sub = await gw.bus.subscribe(streams.subject(op_id, fd, "out"), on_out)
    # Tell the service (request/reply, so we know it heard) that this fd is connected. No
    # flush first: the server takes our SUB before this request (one connection, in
    # order), so nothing the service sends once it heard can miss the subscription.
    try:
        await gw.bus.nc.request(streams.subject(op_id, fd, "attached"), b"", timeout=5)
    except Exception:
        await sub.unsubscribe()
        await ws.close()
        return ws

    async def pump_out() -> None:
        while True:
            msg = await out.get()
            hdrs = msg.headers or {}
            if hdrs.get(streams.EOF_HEADER):
                await ws.close()
                return
            if hdrs.get(streams.TEXT_HEADER):
                await ws.send_str(msg.data.decode())
            else:
                await ws.send_bytes(msg.data)

    pumper = asyncio.create_task(pump_out())
    in_subject = streams.subject(op_id, fd, "in")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await gw.bus.publish(in_subject, msg.data)
            elif msg.type == WSMsgType.TEXT:
                await gw.bus.publish(in_subject, msg.data.encode(),
                                     headers={streams.TEXT_HEADER: "1"})
            else:
                break
    finally:
        await gw.bus.publish(in_subject, b"", headers={streams.EOF_HEADER: "1"})
        # Let what the service already sent reach the client before we drop it.
        try:
            await asyncio.wait_for(asyncio.shield(pumper), 0.5)
        except (asyncio.TimeoutError, Exception):
            pumper.cancel()
        await sub.unsubscribe()
        if closer is not None:
            _secrets.closers.get(op_id, set()).discard(closer)
            if not _secrets.closers.get(op_id, True):
                _secrets.closers.pop(op_id, None)
    return ws

