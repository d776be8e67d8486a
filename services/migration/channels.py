"""The two ends a migration websocket can have here, behind one small interface.

LXD frames a migration websocket so: binary messages carry data (a protobuf on ``control``,
rsync's bytes on ``fs``), and an empty *text* message is a "barrier" that ends one stream
without closing the socket (shared/ws/rwc.go), so one ``fs`` websocket carries the rsync
of each snapshot and then of the instance, one after the other.

- :class:`WsChannel`: a websocket this service dialled itself (pull mode target, push
  mode source): aiohttp's client, TLS with the server certificate as client certificate.
- :class:`BusChannel`: a websocket a client dialled into our gateway (pull mode source,
  push mode target), carried over the bus as exec's are (shared/streams.py).

``recv()`` answers bytes (data), ``BARRIER`` (end of one stream) or None (closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import streams
from shared.errors import CorralError

BARRIER = ""
CONNECT_TIMEOUT = 15.0

if TYPE_CHECKING:
    import aiohttp


class Channel:
    name = ""

    async def recv(self) -> bytes | str | None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def barrier(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def recv_message(self, timeout: float | None = None) -> bytes:
        """One binary message (a control protobuf); the peer closing is an error."""
        msg = await asyncio.wait_for(self.recv(), timeout)
        if msg is None:
            raise CorralError(f"The migration peer closed the {self.name} connection", 500)
        if isinstance(msg, str):
            raise CorralError(f"Unexpected text message on the {self.name} connection", 500)
        return msg


class WsChannel(Channel):
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 name: str) -> None:
        self.session, self.ws, self.name = session, ws, name

    async def recv(self) -> bytes | str | None:
        import aiohttp  # loaded by dial() already; see there why not at module level

        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type == aiohttp.WSMsgType.TEXT:
            return BARRIER
        return None

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def barrier(self) -> None:
        await self.ws.send_str("")

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()


class BusChannel(Channel):
    def __init__(self, ss: streams.ServiceStreams, name: str) -> None:
        self.ss, self.name = ss, name

    async def recv(self) -> bytes | str | None:
        msg = await self.ss.inbox[self.name].get()
        if isinstance(msg, str):
            return BARRIER
        return msg

    async def send(self, data: bytes) -> None:
        await self.ss.send(self.name, data)

    async def barrier(self) -> None:
        await self.ss.send_text(self.name, "")

    async def close(self) -> None:
        await self.ss.eof(self.name)


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS as LXD's migration dialer: our server certificate as client certificate; the
    peer's certificate is pinned by :func:`check_peer` (Corral's and LXD's are self-signed
    leaf certificates with CA:FALSE, which OpenSSL refuses as a trust anchor)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def pem_digest(pem: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    return hashlib.sha256(der).hexdigest()


def check_peer(ws: aiohttp.ClientWebSocketResponse, expected_pem: str) -> None:
    obj: Any = ws.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    try:
        expected = pem_digest(expected_pem)
    except (ValueError, TypeError):
        raise CorralError("Invalid peer certificate: not a PEM certificate", 400) from None
    if not der or hashlib.sha256(der).hexdigest() != expected:
        raise CorralError("The migration peer's certificate is not the one given in "
                          "source.certificate", 403)


async def dial(op_url: str, secret: str, name: str, cert: Path, key: Path,
               peer_cert: str) -> WsChannel:
    """Connect ``<operation URL>/websocket?secret=`` as LXD's migrationConn does."""
    # aiohttp only here (~5-8 MiB): a migration service that never dials a peer (most
    # of them: only pull mode targets and push mode sources do) does not carry it
    import aiohttp

    url = op_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None,
                                                                  sock_connect=CONNECT_TIMEOUT))
    try:
        ws = await asyncio.wait_for(session.ws_connect(
            f"{url}/websocket", params={"secret": secret}, max_msg_size=0,
            ssl=client_context(cert, key) if url.startswith("wss://") else False,
            autoping=True), CONNECT_TIMEOUT)
        if url.startswith("wss://"):
            check_peer(ws, peer_cert)
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise CorralError(f"The migration source refused the {name} connection "
                          f"({exc.status}: {exc.message}): unknown operation or wrong "
                          "secret", 400 if exc.status in (403, 404) else 503) from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        await session.close()
        raise CorralError(f"Cannot connect the migration {name} websocket to {op_url}: "
                          f"{exc or type(exc).__name__}", 503) from None
    except BaseException:
        await session.close()
        raise
    return WsChannel(session, ws, name)


@contextlib.asynccontextmanager
async def opened(names: list[str], ss: streams.ServiceStreams | None, timeout: float,
                 peer: dict[str, Any], secrets: dict[str, str], cert: tuple[Path, Path]
                 ) -> AsyncIterator[dict[str, Any]]:
    """A migration's channels by name, closed at the end (with ``ss``): the websockets the
    peer attaches to this operation (``ss``, within ``timeout`` s), or, without ``ss``,
    ones dialled to the peer's operation (``peer["operation"]``, its pinned
    ``peer["certificate"]``) with ``secrets`` and this server's ``cert``."""
    chans: dict[str, Any] = {}
    try:
        if ss is not None:
            await ss.wait_attached(timeout)
            chans = {n: BusChannel(ss, n) for n in names}
        else:
            for n in names:
                chans[n] = await dial(peer["operation"], secrets[n], n, *cert,
                                      peer.get("certificate") or "")
        yield chans
    finally:
        for c in chans.values():
            try:
                await c.close()
            except Exception:
                pass
        if ss is not None:
            await ss.close()

