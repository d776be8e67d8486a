"""The connection, requests, events and operations of :mod:`shared.client`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import BaseModel

from .. import codec, subjects
from ..errors import CorralError, Unavailable
from ..models import Reply
from .api import Namespaces

# The header that carries an event's stable id (shared.events.ID_HEADER).
ID_HEADER = "Nats-Msg-Id"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
FINAL = ("Success", "Failure", "Cancelled")
OPERATIONS_BUCKET = "operations"


@dataclass
class Event:
    """One LXD event as Corral publishes it, with what NATS adds.

    ``id`` is the event's stable id (the same on a redelivery: drop duplicates by it);
    ``seq`` its sequence in the ``CORRAL_EVENTS`` stream (None for a live-only
    subscription), to resume from with ``events(since_seq=seq + 1)``.
    """

    id: str
    seq: int | None
    subject: str
    type: str
    project: str
    timestamp: str
    location: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_msg(cls, msg: Msg) -> "Event":
        body = json.loads(msg.data)
        seq = None
        try:
            seq = msg.metadata.sequence.stream
        except Exception:  # a core (not JetStream) message has no metadata
            pass
        return cls(id=(msg.headers or {}).get(ID_HEADER, ""), seq=seq, subject=msg.subject,
                   type=body.get("type", ""), project=body.get("project", "default"),
                   timestamp=body.get("timestamp", ""), location=body.get("location", ""),
                   metadata=body.get("metadata") or {})


class Client(Namespaces):
    """One NATS connection as one integration credential.

    A credential limited to a project (``corral bus credentials create --project P``)
    sends every request on ``corral.project.P.<service>.<verb>``, as nats-server requires.
    """

    def __init__(self, nc: NatsClient, *, project: str | None = None,
                 timeout: float = 30.0, user: str = "") -> None:
        self.nc = nc
        self.project = project
        self.user = user
        self.timeout = timeout
        super().__init__()

    @classmethod
    async def connect(cls, credentials: str | Path | dict[str, str],
                      url: str = "nats://127.0.0.1:4222", *, timeout: float = 30.0,
                      **options: Any) -> "Client":
        """Connect with a credentials file (``$CORRAL_DIR/credentials/NAME.json``) or its
        contents; ``options`` go to ``nats.connect``."""
        if not isinstance(credentials, dict):
            credentials = json.loads(Path(credentials).read_text())
        nc = await nats.connect(url, user=credentials["user"],
                                password=credentials["password"],
                                inbox_prefix=credentials.get("inbox_prefix") or "_INBOX",
                                name=f"corral-client-{credentials['user']}", **options)
        return cls(nc, project=credentials.get("project") or None, timeout=timeout,
                   user=credentials["user"])

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------------

    def subject(self, service: str, verb: str, node: str | None = None) -> str:
        if node:
            return subjects.node(node, service, verb)
        if self.project:
            return subjects.project_service(self.project, service, verb)
        return subjects.service(service, verb)

    async def request(self, service: str, verb: str,
                      body: BaseModel | dict[str, Any] | None = None, *,
                      node: str | None = None, timeout: float | None = None) -> Reply:
        """Send ``verb`` to ``service``; a service's error comes back as its CorralError
        (``.code`` is LXD's HTTP-like code)."""
        if isinstance(body, BaseModel):
            body = body.model_dump(mode="python", exclude_none=True)
        body = dict(body or {})
        if self.project:
            body.setdefault("project", self.project)
        if body.get("requestor") is None and self.user:  # who asked, in lifecycle events
            body["requestor"] = {"username": self.user, "protocol": "nats", "address": ""}
        subject = self.subject(service, verb, node)
        timeout = self.timeout if timeout is None else timeout
        try:
            msg = await self.nc.request(subject, codec.encode(body), timeout=timeout)
        except NoRespondersError as exc:
            raise Unavailable(f"The {service} service is not running (no responder on "
                              f"{subject})") from exc
        except (NatsTimeout, asyncio.TimeoutError) as exc:
            raise Unavailable(f"The {service} service did not answer within {timeout:g}s "
                              "(or this credential may not send that request)") from exc
        if msg.headers and ERROR_CODE_HEADER in msg.headers:
            try:
                code = int(msg.headers[ERROR_CODE_HEADER])
            except ValueError:
                code = 500
            raise CorralError.from_code(code, msg.headers.get(ERROR_HEADER, "error"))
        return Reply.model_validate(codec.decode(msg.data) or {})

    # -- events ----------------------------------------------------------------------------

    async def events(self, *, types: list[str] | None = None, project: str | None = None,
                     since_seq: int | None = None, since_time: datetime | None = None
                     ) -> AsyncIterator[Event]:
        """Events as they happen; with ``since_seq`` or ``since_time`` first the ones the
        ``CORRAL_EVENTS`` stream kept from then (a durable record: nothing missed while
        away). A credential limited to a project hears that project only, live."""
        project = project or self.project
        type_token = subjects.token(types[0]) if types and len(types) == 1 else "*"
        project_token = subjects.token(project) if project else "*"
        subject = f"{subjects.PREFIX}.events.{type_token}.{project_token}.>"
        if self.project and since_seq is None and since_time is None:
            sub = await self.nc.subscribe(subject)
        else:
            if since_seq is not None:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                        opt_start_seq=since_seq)
            elif since_time is not None:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                        opt_start_time=since_time.isoformat())
            else:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
            sub = await self.nc.jetstream().subscribe(
                subject, stream=subjects.EVENTS_STREAM, ordered_consumer=True, config=config)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=3600)
                except NatsTimeout:
                    continue
                event = Event.from_msg(msg)
                if types and event.type not in types:
                    continue
                yield event
        finally:
            await sub.unsubscribe()

    # -- operations ------------------------------------------------------------------------

    async def watch_operation(self, operation: str | Reply | dict[str, Any], *,
                              project: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Each state of an operation (LXD's object) until it ends (Success, Failure or
        Cancelled). Takes the id, the async :class:`Reply` or the operation itself."""
        op_id, op_project = _operation_of(operation)
        project = project or op_project or self.project or "default"
        subject = subjects.event("operation", project, "operation")
        sub = await self.nc.subscribe(subject)
        try:
            current = await self._operation_now(op_id)
            if current is not None:
                yield current
                if current["status"] in FINAL:
                    return
            while True:
                msg = await sub.next_msg(timeout=3600)
                meta = json.loads(msg.data).get("metadata") or {}
                if meta.get("id") != op_id:
                    continue
                yield meta
                if meta.get("status") in FINAL:
                    return
        finally:
            await sub.unsubscribe()

    async def wait_operation(self, operation: str | Reply | dict[str, Any], *,
                             timeout: float | None = None) -> dict[str, Any]:
        """The operation once it has ended (its last state)."""

        async def last() -> dict[str, Any]:
            final: dict[str, Any] = {}
            async for state in self.watch_operation(operation):
                final = state
            return final

        return await asyncio.wait_for(last(), timeout)

    async def _operation_now(self, op_id: str) -> dict[str, Any] | None:
        """The operation's state from the ``operations`` bucket (not for a credential
        limited to a project: it may not read the bucket; its events tell instead)."""
        if self.project:
            return None
        try:
            kv = await self.nc.jetstream().key_value(OPERATIONS_BUCKET)
            entry = await kv.get(op_id)
        except Exception:
            return None
        record = codec.decode(entry.value) if entry.value else None
        if not record:
            return None
        return {k: v for k, v in record.items() if k not in ("project", "owner")}


def _operation_of(operation: str | Reply | dict[str, Any]) -> tuple[str, str | None]:
    if isinstance(operation, Reply):
        if operation.operation is None:
            raise ValueError("this reply started no operation (a sync reply)")
        operation = operation.operation
    if isinstance(operation, dict):
        return str(operation["id"]), operation.get("project")
    return operation, None


async def connect(credentials: str | Path | dict[str, str],
                  url: str = "nats://127.0.0.1:4222", **options: Any) -> Client:
    """``Client.connect``."""
    return await Client.connect(credentials, url, **options)
