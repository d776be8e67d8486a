"""Is a service process alive? Asked of nats.micro, which every Corral process runs.

Why: a NATS request to a process that dies never gets an answer; the caller only learns
when its timeout ends, which for slow work (an image unpack) is minutes. Each micro
service instance answers ``$SRV.PING.<name>.<id>`` while its process lives, and a
connected nats-server answers "no responders" at once when it does not, so a caller can
tell within seconds that the process it waits on is gone. No heartbeat writes, nothing
new to configure, no subject beyond ``$SRV.>`` that every process may already use.
"""

from __future__ import annotations

import asyncio
import json

import nats.errors

from .bus import Bus


async def alive(bus: Bus, service: str, instance_id: str, timeout: float = 2.0) -> bool:
    """Whether micro instance ``instance_id`` of ``service`` (``corral-<svc>``) answers.

    Unknown (our own connection down, a slow answer) counts as alive: only a "no
    responders" from a connected server means the process is gone.
    """
    nc = bus.nc
    if nc is None or not nc.is_connected:
        return True
    try:
        await nc.request(f"$SRV.PING.{service}.{instance_id}", b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return False
    except Exception:
        return True
    return True


async def instance_on(bus: Bus, service: str, node: str, timeout: float = 1.0
                      ) -> str | None:
    """The micro id of ``service`` running on ``node`` (None if none answers in time)."""
    nc = bus.nc
    if nc is None or not nc.is_connected:
        return None
    inbox = nc.new_inbox()
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_reply(msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        if (data.get("metadata") or {}).get("node") == node and not found.done():
            found.set_result(str(data.get("id")))

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        return await asyncio.wait_for(found, timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
