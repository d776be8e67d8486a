"""The bus client every process uses: connect with reconnect, typed request/reply.

A request that nobody answers in time becomes :class:`Unavailable` (503) naming the
service, never a hang; an error reply from a service becomes the same :class:`CorralError`
it raised over there.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, NoRespondersError, NoServersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import errors as jse
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import codec, subjects, tracing
from .config import Config
from .errors import CorralError, Unavailable
from .log import get_logger
from .models import Message, Reply

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"

log = get_logger()
_BUS_TRACER = tracing.tracer("corral.bus")  # looked up once, not per request

# Services bound to a host: in a cluster each node's answer for its own instances, volumes
# and bridges, on ``corral.node.<node>.<svc>.<verb>`` (see ``Bus.request``).
HOST_BOUND = ("instance", "storage", "network", "migration")


class Bus:
    """One NATS connection per process, shared by everything in it."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        # Set while connecting: the server said our credentials are not valid.
        self._refused: asyncio.Future[str] | None = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus not connected")
        return self._js

    def credentials(self) -> dict[str, str]:
        """User, password and private inbox prefix from this process's credentials file.

        No file means an anonymous connection, which a Corral nats-server refuses (the
        error then names the file); a file we may not read is an error at once.
        """
        path = self.config.credentials_for(self.name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise Unavailable(f"Cannot read the bus credentials {path}: {exc}") from exc
        return {"user": data["user"], "password": data["password"],
                "inbox_prefix": data.get("inbox_prefix") or "_INBOX"}

    async def connect(self, wait: float = 30.0) -> "Bus":
        """Connect, retrying until ``wait`` seconds pass (nats-server may still be starting).

        A server that refuses our credentials is an error at once: nats-py would retry it
        for ever, each attempt refused the same way.
        """
        deadline = time.monotonic() + wait
        delay = 0.05
        creds = self.credentials()
        while True:
            self._refused = asyncio.get_running_loop().create_future()
            attempt = asyncio.ensure_future(nats.connect(
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
                **creds,
            ))
            try:
                await asyncio.wait({attempt, self._refused},
                                   return_when=asyncio.FIRST_COMPLETED)
                if not attempt.done():
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
                    raise AuthorizationError()
                self.nc = attempt.result()
                break
            except (AuthorizationError, NatsError) as exc:
                if not isinstance(exc, AuthorizationError) and \
                        "authorization violation" not in str(exc).lower():
                    raise
                path = self.config.credentials_for(self.name)
                raise Unavailable(
                    f"NATS at {self.config.nats_url} refused {self.name}'s connection "
                    f"(authorization violation) with "
                    + (f"the credentials in {path}" if creds else f"no credentials ({path} "
                       "does not exist; `make up` writes it)")) from exc
            except (NoServersError, OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"Cannot reach NATS at {self.config.nats_url}: {exc}. "
                        "Is nats-server running (make up)?"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                self._refused = None
        self._js = self.nc.jetstream()
        return self

    async def close(self) -> None:
        if self.nc and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing / server gone
                await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        refused = isinstance(exc, AuthorizationError) or \
            "authorization violation" in str(exc).lower()
        if refused and self._refused is not None and not self._refused.done():
            self._refused.set_result(str(exc))
            return
        # A permission violation is the server refusing a subject this user may not use:
        # a missing entry in shared/auth.py's tables, or a caller overstepping its role.
        if "permissions violation" in str(exc).lower():
            log.warning("nats refused a subject", user=self.name, error=str(exc))
        else:
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
        # A client span per request: the answering service's server span is its child,
        # so one trace links every process a request reaches (shared/tracing.py).
        attributes = ({"messaging.system": "nats", "messaging.destination.name": subject,
                       "corral.caller": self.name} if tracing.recording() else None)
        with _BUS_TRACER.start_as_current_span(subject, kind=SpanKind.CLIENT,
                                               attributes=attributes) as span:
            try:
                return await self._request(subject, payload, timeout, service, headers)
            except CorralError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.message))
                span.set_attribute("corral.error_code", exc.code)
                raise

    async def _request(self, subject: str, payload: Any, timeout: float | None,
                       service: str | None, headers: dict[str, str] | None) -> Msg:
        assert self.nc is not None
        timeout = self.config.request_timeout if timeout is None else timeout
        hdrs = tracing.inject(dict(headers or {}))
        who = service or subject
        try:
            # Bytes are an encoded body already (JSON with its Content-Type header, as the
            # gateway's instance list sends): they go as they are.
            data = payload if isinstance(payload, bytes) else codec.encode(payload)
            msg = await self.nc.request(subject, data, timeout=timeout, headers=hdrs)
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
        """Ask ``svc`` to do ``verb``; cluster-wide unless ``node`` names a host.

        In a cluster a host-bound service is asked on this process's own node unless
        ``node`` names another: a volume or a bridge is made where its instance runs, and
        the gateway names the node of the instance a request is about (placement.py)."""
        if node is None and self.config.cluster and svc in HOST_BOUND:
            node = self.config.node
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


def bus_error(exc: Exception) -> Exception:
    """A NATS error (the bus restarting under a KV write or a request) as a 503 that says
    what happened, rather than an "Internal error: nats: timeout"; other errors as they are."""
    if isinstance(exc, (NatsError, jse.Error)) and not isinstance(exc, CorralError):
        return Unavailable(f"The message bus did not answer ({exc or type(exc).__name__}); "
                           "retry when it is back")
    return exc
