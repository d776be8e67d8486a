"""Pumping bytes between non-blocking fds and websockets, on the event loop.

Why its own module: exec and the interactive console both pump a command's or a
console's fds to websockets bridged over the bus; they share these pumps (never a thread
per stream), and neither mixin should import the other for them.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any, Awaitable, Callable

CHUNK = 64 * 1024
EXIT_GRACE = 0.3  # seconds of silence after exit before an output stream counts as done

Sink = Callable[[bytes], Awaitable[None]]


async def _ready(fd: int, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def pump_out(fd: int, sink: Sink, exited: asyncio.Event) -> None:
    """Copy ``fd`` to ``sink`` until EOF (or EIO: a pty whose other side is gone)."""
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            waiter = asyncio.ensure_future(_ready(fd))
            if not exited.is_set():
                gone = asyncio.ensure_future(exited.wait())
                await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if waiter.done():
                    continue
            try:
                await asyncio.wait_for(waiter, EXIT_GRACE)
            except asyncio.TimeoutError:
                return
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        if not data:
            return
        await sink(data)


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _ready(fd, write=True)


async def pump_in(inbox: asyncio.Queue[Any], fd: int, owned: set[int] | None) -> None:
    """Copy websocket messages into ``fd`` until the client's EOF.

    LXD's clients end stdin with an empty text message (a "barrier"); the gateway's EOF
    (None) means the websocket closed. Errors writing mean the command closed its stdin.
    A pipe (``owned`` given) is then closed so the command sees EOF; a pty stays open.
    """
    os.set_blocking(fd, False)
    try:
        while (item := await inbox.get()) is not None:
            if isinstance(item, str):
                if not item:
                    return
                item = item.encode()
            await write_all(fd, item)
    except OSError:
        return
    finally:
        if owned is not None and fd in owned:
            owned.discard(fd)
            os.close(fd)
