"""What a hook does with an event: POST a webhook, publish on NATS, or run a Corral verb.

Each action is one attempt; the runner retries. Publish and run go over a connection of
the hook's own bus credential (``hook-<name>``, made by ``credentials.py``), so nats-server
enforces what a hook may do: a run hook is an ``operator`` (of its project, when it names
one), a publish hook may publish only its subject. The hooks service's own user can do
neither.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from shared import codec, subjects
from shared.bus import ERROR_CODE_HEADER, ERROR_HEADER
from shared.errors import CorralError

from . import rules


class DeliveryError(Exception):
    """One failed attempt; the message says what the receiver or the bus answered.
    ``permanent``: another attempt cannot succeed (a run hook's request refused as bad
    input), so it goes to the dead letters at once."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class HookConnection:
    """A lazily opened NATS connection as the hook's credential."""

    def __init__(self, nats_url: str, credentials: Path) -> None:
        self.nats_url = nats_url
        self.credentials = credentials
        self.nc: Client | None = None

    async def get(self) -> Client:
        if self.nc is not None and not self.nc.is_closed:
            return self.nc
        try:
            creds = json.loads(self.credentials.read_text())
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"the hook's credential {self.credentials}: {exc}") from exc

        async def quiet(_exc: Exception) -> None:  # nats-py logs every error otherwise
            return None

        try:
            self.nc = await nats.connect(
                servers=self.nats_url.split(","), user=creds["user"],
                password=creds["password"], inbox_prefix=creds["inbox_prefix"],
                name=f"corral-{creds['user']}", connect_timeout=2, allow_reconnect=True,
                max_reconnect_attempts=-1, reconnect_time_wait=0.25, error_cb=quiet)
        except Exception as exc:
            raise DeliveryError(f"cannot connect to NATS as {creds['user']}: {exc}") from exc
        return self.nc

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception:
                pass
        self.nc = None


def delivery_headers(hook: dict[str, Any], event_id: str, attempt: int) -> dict[str, str]:
    return {rules.EVENT_ID_HEADER: event_id, rules.HOOK_HEADER: hook["name"],
            rules.ATTEMPT_HEADER: str(attempt)}


class HTTP:
    """The service's one aiohttp session, made at the first webhook delivered.

    Why lazy: aiohttp costs ~8 MiB in this process (shared/lean.py keeps nats-py from
    importing it), paid for nothing on a host with no webhook hook."""

    def __init__(self) -> None:
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit_per_host=8, enable_cleanup_closed=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def webhook(http: HTTP, hook: dict[str, Any], body: bytes,
                  event_id: str, attempt: int) -> str:
    """One signed POST. aiohttp rather than httpx (the image service's client): a
    keep-alive POST costs a third of the time here (bench/hooks.py), and a webhook is
    the hot path of a busy hook."""
    spec = hook["webhook"]
    headers = {"Content-Type": "application/json", "User-Agent": "corral-hooks",
               **delivery_headers(hook, event_id, attempt)}
    if spec.get("secret"):
        headers[rules.SIGNATURE_HEADER] = rules.signature(spec["secret"], body)
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=spec.get("timeout", 5.0))
    try:
        async with http.session().post(spec["url"], data=body, headers=headers, timeout=timeout,
                             allow_redirects=False) as resp:
            await resp.read()
            status = resp.status
    except asyncio.TimeoutError as exc:
        raise DeliveryError(f"POST {spec['url']}: no answer within "
                            f"{spec.get('timeout', 5.0):g}s") from exc
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"POST {spec['url']}: {type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise DeliveryError(f"POST {spec['url']}: HTTP {status}")
    return f"HTTP {status}"


async def publish(conn: HookConnection, hook: dict[str, Any], body: bytes, event_id: str,
                  attempt: int) -> str:
    nc = await conn.get()
    subject = hook["publish"]["subject"]
    try:
        await nc.publish(subject, body, headers=delivery_headers(hook, event_id, attempt))
        await nc.flush(timeout=5)  # the server has it (a permission error comes async)
    except Exception as exc:
        raise DeliveryError(f"publish to {subject}: {type(exc).__name__}: {exc}") from exc
    return f"published on {subject}"


def run_request(hook: dict[str, Any], event: dict[str, Any], event_id: str
                ) -> tuple[str, dict[str, Any]]:
    """The subject and message of a run hook's request for ``event``: an object request
    on the event's object (``name``) with the rendered body."""
    svc, verb = hook["run"]["verb"].split(".", 1)
    facts = rules.facts(event, event_id)
    project = event.get("project") or "default"
    subject = (subjects.project_service(hook["project"], svc, verb) if hook.get("project")
               else subjects.service(svc, verb))
    message = {"project": project, "name": facts["name"],
               "body": rules.render(hook["run"].get("body") or {}, facts),
               "requestor": {"username": f"hook:{hook['name']}", "protocol": "hook",
                             "address": "@"}}
    return subject, message


async def run(conn: HookConnection, hook: dict[str, Any], event: dict[str, Any],
              event_id: str, attempt: int, timeout: float = 10.0) -> str:
    nc = await conn.get()
    subject, message = run_request(hook, event, event_id)
    try:
        msg = await nc.request(subject, codec.encode(message), timeout=timeout,
                               headers=delivery_headers(hook, event_id, attempt))
    except Exception as exc:
        raise DeliveryError(f"request {subject}: {type(exc).__name__}: {exc}") from exc
    if msg.headers and ERROR_CODE_HEADER in msg.headers:
        err = CorralError.from_code(int(msg.headers[ERROR_CODE_HEADER]),
                                    msg.headers.get(ERROR_HEADER, "error"))
        if err.code == 409 and attempt > 1:  # what the earlier attempt made is there
            return f"{hook['run']['verb']}: already done (409 on attempt {attempt}: {err})"
        raise DeliveryError(f"{hook['run']['verb']}: {err.code} {err}",
                            permanent=err.code in (400, 403, 404))
    reply = codec.decode(msg.data) or {}
    op = reply.get("operation") if isinstance(reply, dict) else None
    if not isinstance(op, dict) or not op.get("id"):
        return f"{hook['run']['verb']}: done"
    if hook.get("project"):  # a project's credential may not read the operations bucket
        return f"{hook['run']['verb']}: operation {op['id']} started"
    final = await operation_end(nc, str(op["id"]), OPERATION_TIMEOUT)
    if final.get("status") != "Success":
        raise DeliveryError(f"{hook['run']['verb']}: operation {op['id']} "
                            f"{final.get('status', 'unknown')}: {final.get('err', '')}")
    return f"{hook['run']['verb']}: operation {op['id']} Success"


FINAL = ("Success", "Failure", "Cancelled")
OPERATION_TIMEOUT = 300.0


async def operation_end(nc: Client, op_id: str, timeout: float) -> dict[str, Any]:
    """The operation's last state, read from the ``operations`` bucket (which an operator
    credential may read) until it ends or ``timeout`` passes (then a DeliveryError: the
    attempt is retried, and the verb's request_id-less retry makes another one, which is
    what an operator would do by hand)."""
    kv = await nc.jetstream().key_value("operations")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        try:
            entry = await kv.get(op_id)
            record = codec.decode(entry.value) if entry.value else {}
        except Exception:
            record = {}
        if record.get("status") in FINAL:
            return record
        if loop.time() > deadline:
            raise DeliveryError(f"operation {op_id} did not end within {timeout:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
