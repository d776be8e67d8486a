"""``/1.0/events``: a websocket of LXD event JSON from ``corral.events.>``, by type and project."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web

from shared import subjects

from ..request import all_projects, project_of
from ..routing import Context
from ..scrub import scrub

DEFAULT_EVENT_TYPES = ("logging", "operation", "lifecycle")


async def events(ctx: Context, request: web.Request) -> web.StreamResponse:
    types = {t for t in request.query.get("type", "").split(",") if t} or set(
        DEFAULT_EVENT_TYPES)
    every_project = all_projects(request)
    project = project_of(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10000)

    async def on_event(msg: Any) -> None:
        parts = msg.subject.split(".")  # corral.events.<type>.<project>.<entity>
        if len(parts) < 5 or parts[2] not in types:
            return
        if not every_project and parts[3] != subjects.token(project):
            return
        data = msg.data
        if parts[2] == "operation":  # its err is an error message: no host paths either
            data = scrub(data.decode(), ctx.config.dir).encode()
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:  # a stuck client must not stall the gateway
            pass

    sub = await ctx.bus.subscribe(subjects.EVENTS_ALL, on_event)

    async def pump() -> None:
        while True:
            data = await queue.get()
            await ws.send_str(data.decode())

    pumper = asyncio.create_task(pump())
    try:
        async for msg in ws:  # LXD clients send nothing; we wait for the close
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
    finally:
        pumper.cancel()
        await sub.unsubscribe()
    return ws
