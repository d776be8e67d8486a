"""The bus client every process uses: connect with reconnect, typed request/reply.

A request that nobody answers in time becomes :class:`Unavailable` (503) naming the
service, never a hang; an error reply from a service becomes the same :class:`CorralError`
it raised over there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from . import codec, subjects, tracing
from .config import Config
from .errors import CorralError, Unavailable
from .log import get_logger
from .models import Message, Reply

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"

log = get_logger()


class Bus:
    """One NATS connection per process, shared by everything in it."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus not connected")
        return self._js

    async def connect(self, wait: float = 30.0) -> "Bus":
        """Connect, retrying until ``wait`` seconds pass (nats-server may still be starting)."""
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                self.nc = await nats.connect(
                    servers=self.config.nats_url.split(","),
                    name=f"corral-{self.name}@{self.config.node}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    connect_timeout=2,
                    ping_interval=5,
                    max_outstanding_pings=3,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                )
                break
            except (NoServersError, OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"Cannot reach NATS at {self.config.nats_url}: {exc}. "
                        "Is nats-server running (make up)?"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._js = self.nc.jetstream()
        return self

    async def close(self) -> None:
        if self.nc and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing / server gone
                await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", error=str(exc))

    async def _on_disconnect(self) -> None:
        log.warning("nats disconnected", url=self.config.nats_url)

    async def _on_reconnect(self) -> None:
        log.info("nats reconnected", url=self.nc.connected_url.netloc if self.nc else "")

    # -- request/reply -------------------------------------------------------------------

    async def request_raw(
        self, subject: str, payload: Any, *, timeout: float | None = None,
        service: str | None = None, headers: dict[str, str] | None = None,
    ) -> Msg:
        assert self.nc is not None
        timeout = self.config.request_timeout if timeout is None else timeout
        hdrs = tracing.inject(dict(headers or {}))
        who = service or subject
        try:
            msg = await self.nc.request(subject, codec.encode(payload), timeout=timeout,
                                        headers=hdrs)
        except NoRespondersError as exc:
            raise Unavailable(
                f"The {who} service is not running (no responder on {subject})"
            ) from exc
        except (NatsTimeout, asyncio.TimeoutError) as exc:
            raise Unavailable(f"The {who} service did not answer within {timeout:g}s") from exc
        except Exception as exc:  # connection closed / reconnecting
            if self.nc.is_closed or self.nc.is_reconnecting or not self.nc.is_connected:
                raise Unavailable(f"The message bus is not reachable: {exc}") from exc
            raise
        if msg.headers and ERROR_CODE_HEADER in msg.headers:
            try:
                code = int(msg.headers[ERROR_CODE_HEADER])
            except ValueError:
                code = 500
            raise CorralError.from_code(code, msg.headers.get(ERROR_HEADER, "error"))
        return msg

    async def request(
        self, svc: str, verb: str, request: Message | dict[str, Any], *,
        node: str | None = None, timeout: float | None = None,
    ) -> Reply:
        """Ask ``svc`` to do ``verb``; cluster-wide unless ``node`` names a host."""
        subject = subjects.node(node, svc, verb) if node else subjects.service(svc, verb)
        msg = await self.request_raw(subject, request, timeout=timeout, service=svc)
        return Reply.model_validate(codec.decode(msg.data) or {})

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None
                      ) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, data, headers=headers)

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]],
                        queue: str = "") -> Any:
        assert self.nc is not None
        return await self.nc.subscribe(subject, queue=queue, cb=cb)
