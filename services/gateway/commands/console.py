"""``corral console NAME``: attach to an instance's console (ctrl-a q detaches, as lxc).

``--show-log`` prints the console log instead, ``--clear`` empties it. Attaching asks
``POST /1.0/instances/<n>/console`` for a websocket operation and bridges our terminal
(raw mode when it is one) to its "0" websocket; window size goes over "control".
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import typer

DETACH = b"\x01q"  # ctrl-a q


def register(app: typer.Typer) -> None:
    @app.command("console")
    def console(name: str = typer.Argument(..., help="The instance"),
                show_log: bool = typer.Option(False, "--show-log",
                                              help="Print the console log and exit"),
                clear: bool = typer.Option(False, "--clear", help="Empty the console log"),
                project: str = typer.Option("default", "--project")) -> None:
        """Attach to the console of an instance (ctrl-a q to detach), or show its log."""
        from ..cli import client
        from .file import _check

        path = f"/1.0/instances/{name}/console"
        if clear:
            _check(client().raw("DELETE", path, params={"project": project}))
            return
        if show_log:
            resp = client().raw("GET", path, params={"project": project})
            _check(resp)
            sys.stdout.buffer.write(resp.content)
            return
        if os.isatty(0):
            print("To detach from the console, press: <ctrl>+a q", file=sys.stderr)
        asyncio.run(attach(client().socket, name, project))


async def attach(socket: Path, name: str, project: str) -> None:
    import aiohttp

    from ..client import APIError
    from .exec import _term_size, open_websockets

    width, height = _term_size() or (80, 24)
    body = {"width": width, "height": height, "type": "console"}
    conn = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=conn) as http:
            _op, control, socks = await open_websockets(http, name, "console", body, project)
            data = socks["0"]
            try:
                await _bridge(data)
            finally:
                await control.close()
                await data.close()
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise APIError(f"Cannot reach Corral at {socket}: is it running? (make up)") from exc


async def _bridge(ws: Any) -> None:
    """Terminal (raw) <-> websocket until ctrl-a q, stdin's end or the console's end."""
    import aiohttp

    saved = None
    if os.isatty(0):
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                chunk = os.read(0, 4096)
            except OSError:
                chunk = b""
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            if not chunk:
                return

    async def send() -> None:
        prev = b""
        while chunk := await queue.get():
            if DETACH in prev[-1:] + chunk:
                head = (prev[-1:] + chunk).split(DETACH, 1)[0][len(prev[-1:]):]
                if head:
                    await ws.send_bytes(head)
                return
            await ws.send_bytes(chunk)
            prev = chunk
        if not os.isatty(0):  # piped input: let the output of what we sent arrive
            await asyncio.sleep(float(os.environ.get("CORRAL_CONSOLE_LINGER", "1")))

    async def recv() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            out = msg.data
            while out:
                out = out[os.write(1, out):]

    threading.Thread(target=reader, daemon=True).start()
    tasks = [asyncio.ensure_future(send()), asyncio.ensure_future(recv())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
            print("", file=sys.stderr)
