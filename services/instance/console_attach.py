"""Interactive console, LXD's ``POST /1.0/instances/<name>/console``, as a service mixin.

The answer is a websocket operation with ``fds`` ``{"0": ..., "control": ...}``: "0"
carries the console bytes both ways, "control" window-resize messages (a serial line has
no size: they are accepted and ignored). The bytes come from the driver's
``console_open`` (a VM's serial pty, a container's console via LXC); they are
pumped with the same non-blocking pumps exec uses, no thread per stream. The operation
ends (Success) when the client closes either websocket; the guest keeps running.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared import streams
from shared.api import url
from shared.config import env_seconds
from shared.errors import BadRequest
from shared.messages.exec import ExecRequest
from shared.models import Reply
from shared.service import endpoint

from .names import host_of
from .pumps import pump_in, pump_out

WS_TIMEOUT = env_seconds("CORRAL_WS_TIMEOUT", 30.0, 1.0)  # as exec's


class ConsoleAttachMixin:
    """``console_attach``: see the module docstring."""

    @endpoint("console_attach", ExecRequest)
    async def console_attach(self, req: ExecRequest) -> Reply:
        body = req.body or {}
        kind = body.get("type") or "console"
        if kind != "console":
            raise BadRequest(f"Console type {kind!r} is not supported: use \"console\" "
                             "(there is no VGA console)")
        rec = await self.require_instance(req.project, req.name)
        drv = self.driver_of(rec)
        if not drv.capabilities.console:
            raise BadRequest(f"An interactive console is not supported for a {rec['type']}")
        status = await self.instance_status(rec)
        if status != "Running":
            raise BadRequest("Instance is not running" if status != "Frozen"
                             else "Instance is frozen")
        fd = await asyncio.to_thread(drv.console_open, host_of(rec))
        names = ["0", "control"]
        source = url("instances", req.name, req.project)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run(handle: Any) -> None:
            ss = streams.ServiceStreams(self.bus, handle.id, names)
            try:
                try:
                    await ss.open()
                except BaseException as exc:
                    ready.set_exception(exc)
                    raise
                ready.set_result(None)
                await ss.wait_attached(WS_TIMEOUT, ["0"])
                await _bridge(ss, fd)
            finally:
                _close(fd)
                await ss.close()
                await self.bus.nc.flush()

        try:
            op = await self.operations.start(
                "Showing console", run, resources={"instances": [source]},
                cls="websocket", project=req.project, metadata={"fds": streams.new_fds(names)})
        except BaseException:
            _close(fd)
            raise
        await ready
        await self.events.lifecycle("instance-console", source, project=req.project,
                                    context={"type": kind}, requestor=req.requestor)
        return Reply(type="async", operation=op.lxd())


async def _bridge(ss: streams.ServiceStreams, fd: int) -> None:
    """Pump until the client closes "0" or "control" (or the console goes away)."""
    never = asyncio.Event()

    async def drain_control() -> None:
        while await ss.inbox["control"].get() is not None:
            pass  # window-resize means nothing to a serial line

    async def sink(data: bytes) -> None:
        await ss.send("0", data)

    tasks = [asyncio.ensure_future(pump_out(fd, sink, never)),
             asyncio.ensure_future(pump_in(ss.inbox["0"], fd, None)),
             asyncio.ensure_future(drain_control())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
