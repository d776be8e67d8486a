"""Websocket clients of the gateway: exec, console and events.

Imported only by the commands that stream (``exec``, ``console``, ``monitor``), so
asyncio and aiohttp cost nothing to the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import aiohttp

from .client import APIError

BASE = "http://corral"
DETACH = b"\x01q"  # ctrl-a q, as lxc console
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def unreachable(socket: Path) -> APIError:
    return APIError(f"Cannot reach Corral at {socket}: is it running? (make up)")


def term_size() -> tuple[int, int] | None:
    try:
        sz = os.get_terminal_size(1)
        return sz.columns, sz.lines
    except OSError:
        return None


async def open_websockets(http: Any, name: str, kind: str, body: dict[str, Any],
                          project: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """POST ``/1.0/instances/<name>/<kind>`` (exec, console) and connect its websockets.

    Returns the operation, the control websocket and the others by fd name.
    """
    async with http.post(f"{BASE}/1.0/instances/{name}/{kind}",
                         params={"project": project}, json=body) as resp:
        env = await resp.json(content_type=None)
    if env.get("type") == "error":
        raise APIError(env.get("error") or f"{kind} failed", env.get("error_code", 0))
    op = env["metadata"]
    fds = op["metadata"]["fds"]
    ws_url = f"{BASE}/1.0/operations/{op['id']}/websocket?secret="
    control = await http.ws_connect(ws_url + fds["control"], max_msg_size=0)
    socks = {k: await http.ws_connect(ws_url + v, max_msg_size=0)
             for k, v in fds.items() if k != "control"}
    return op, control, socks


# -- exec --------------------------------------------------------------------------------

async def run_exec(socket: Path, name: str, body: dict[str, Any], project: str) -> int:
    """Start the command, bridge our fds to its websockets, return its exit code."""
    conn = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=conn) as http:
            op, control, socks = await open_websockets(http, name, "exec", body, project)
            io_done = asyncio.ensure_future(_exec_bridge(socks, control, body["interactive"]))
            async with http.get(f"{BASE}/1.0/operations/{op['id']}/wait",
                                params={"timeout": "-1"}) as resp:
                final = (await resp.json(content_type=None)).get("metadata") or {}
            try:
                await asyncio.wait_for(asyncio.shield(io_done), 10)
            except asyncio.TimeoutError:
                io_done.cancel()
            await control.close()
            for ws in socks.values():
                await ws.close()
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise unreachable(socket) from exc
    if final.get("status") != "Success":
        raise APIError(final.get("err") or "exec failed", 400)
    return int((final.get("metadata") or {}).get("return", 0))


async def _exec_bridge(socks: dict[str, Any], control: Any, interactive: bool) -> None:
    """Copy stdin -> fd 0 and fds 1/2 (or the pty's 0) -> stdout/stderr until EOF."""
    loop = asyncio.get_running_loop()
    saved = _raw_terminal() if interactive else None
    for sig in FORWARDED:
        loop.add_signal_handler(sig, lambda s=sig: asyncio.ensure_future(control.send_str(
            json.dumps({"command": "signal", "signal": int(s)}))))
    if interactive:
        loop.add_signal_handler(signal.SIGWINCH, lambda: asyncio.ensure_future(_resize(control)))
    stdin = asyncio.ensure_future(_send_stdin(socks["0"]))
    outs = {"0": 1, "1": 1, "2": 2} if interactive else {"1": 1, "2": 2}
    try:
        await asyncio.gather(*(_recv(socks[k], fd) for k, fd in outs.items() if k in socks))
    finally:
        stdin.cancel()
        for sig in (*FORWARDED, signal.SIGWINCH):
            loop.remove_signal_handler(sig)
        _restore_terminal(saved)


async def _resize(control: Any) -> None:
    size = term_size()
    if size:
        await control.send_str(json.dumps({"command": "window-resize", "args": {
            "width": str(size[0]), "height": str(size[1])}}))


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]
                  ) -> Callable[[], None]:
    """Stdin in a daemon thread (a file, a pipe or a terminal that never ends)."""
    def reader() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return
    return reader


async def _send_stdin(ws: Any) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=_stdin_reader(asyncio.get_running_loop(), queue),
                     daemon=True).start()
    while data := await queue.get():
        await ws.send_bytes(data)
    await ws.send_str("")  # LXD's barrier: stdin ended


async def _recv(ws: Any, fd: int) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        data = msg.data
        while data:
            data = data[os.write(fd, data):]
    sys.stdout.flush()


def _raw_terminal() -> list[Any] | None:
    """Put a terminal stdin in raw mode; returns what to restore (None: not a terminal)."""
    if not os.isatty(0):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    return saved


def _restore_terminal(saved: list[Any] | None) -> None:
    if saved is not None:
        import termios

        termios.tcsetattr(0, termios.TCSADRAIN, saved)


# -- console -----------------------------------------------------------------------------

async def attach_console(socket: Path, name: str, project: str) -> None:
    width, height = term_size() or (80, 24)
    body = {"width": width, "height": height, "type": "console"}
    conn = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=conn) as http:
            _op, control, socks = await open_websockets(http, name, "console", body, project)
            data = socks["0"]
            try:
                await _console_bridge(data)
            finally:
                await control.close()
                await data.close()
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise unreachable(socket) from exc


async def _console_bridge(ws: Any) -> None:
    """Terminal (raw) <-> websocket until ctrl-a q, stdin's end or the console's end."""
    saved = _raw_terminal()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=_stdin_reader(asyncio.get_running_loop(), queue),
                     daemon=True).start()

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

    tasks = [asyncio.ensure_future(send()), asyncio.ensure_future(recv())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if saved is not None:
            _restore_terminal(saved)
            print("", file=sys.stderr)


# -- events ------------------------------------------------------------------------------

async def monitor(socket: Path, params: dict[str, str], print_event: Callable[[Any], None],
                  count: int) -> None:
    """Print ``/1.0/events`` as they come; stop after ``count`` (0: never)."""
    seen = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))
                                         ) as session:
            async with session.ws_connect(f"{BASE}/1.0/events", params=params,
                                          heartbeat=30) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    print_event(json.loads(msg.data))
                    seen += 1
                    if count and seen >= count:
                        return
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise unreachable(socket) from exc
