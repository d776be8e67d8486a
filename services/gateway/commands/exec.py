"""``corral exec NAME [--env K=V] [--cwd DIR] [--user N] -- CMD...``: LXD's exec client.

A pty when stdin and stdout are terminals (raw mode, window size followed), else three
pipes; stdin is forwarded, signals (^C when not in raw mode, SIGTERM, SIGHUP) are
forwarded over the control websocket, and the command's exit code becomes ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional

import typer

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def register(app: typer.Typer) -> None:
    @app.command("exec", no_args_is_help=True)
    def exec_(name: str = typer.Argument(..., help="The instance"),
              command: List[str] = typer.Argument(..., help="The command (after --)"),
              env: List[str] = typer.Option([], "--env", help="K=V, repeatable"),
              cwd: str = typer.Option("", "--cwd", help="Working directory"),
              user: int = typer.Option(0, "--user", help="uid to run as"),
              group: int = typer.Option(0, "--group", help="gid to run as"),
              force_interactive: bool = typer.Option(False, "-t", help="Force a pty"),
              force_pipes: bool = typer.Option(False, "-T", help="Force pipes, no pty"),
              project: Optional[str] = typer.Option(None, "--project")) -> None:
        """Run a command in an instance; its exit code is ours."""
        from ..cli import client

        environment = {}
        for item in env:
            k, sep, v = item.partition("=")
            if not k:
                raise typer.BadParameter(f"--env {item!r}: expected KEY=VALUE")
            environment[k] = v
        interactive = os.isatty(0) and os.isatty(1)
        if force_interactive or force_pipes:
            interactive = force_interactive
        if interactive and "TERM" in os.environ:
            environment.setdefault("TERM", os.environ["TERM"])
        body = {"command": command, "environment": environment, "interactive": interactive,
                "wait-for-websocket": True, "user": user, "group": group, "cwd": cwd}
        size = _term_size() if interactive else None
        if size:
            body["width"], body["height"] = size
        code = asyncio.run(run_exec(client().socket, name, body, project or "default"))
        raise typer.Exit(code)


def _term_size() -> tuple[int, int] | None:
    try:
        sz = os.get_terminal_size(1)
        return sz.columns, sz.lines
    except OSError:
        return None


BASE = "http://corral"


async def open_websockets(http: Any, name: str, kind: str, body: dict[str, Any],
                          project: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """POST ``/1.0/instances/<name>/<kind>`` (exec, console) and connect its websockets.

    Returns the operation, the control websocket and the others by fd name.
    """
    from ..client import APIError

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


async def run_exec(socket: Path, name: str, body: dict[str, Any], project: str) -> int:
    """Start the command, bridge our fds to its websockets, return its exit code."""
    import aiohttp

    from ..client import APIError

    conn = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=conn) as http:
            op, control, socks = await open_websockets(http, name, "exec", body, project)
            io_done = asyncio.ensure_future(_bridge(socks, control, body["interactive"]))
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
        raise APIError(f"Cannot reach Corral at {socket}: is it running? (make up)") from exc
    if final.get("status") != "Success":
        raise APIError(final.get("err") or "exec failed", 400)
    return int((final.get("metadata") or {}).get("return", 0))


async def _bridge(socks: dict[str, Any], control: Any, interactive: bool) -> None:
    """Copy stdin -> fd 0 and fds 1/2 (or the pty's 0) -> stdout/stderr until EOF."""
    loop = asyncio.get_running_loop()
    saved = None
    if interactive and os.isatty(0):
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)
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
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)


async def _resize(control: Any) -> None:
    size = _term_size()
    if size:
        await control.send_str(json.dumps({"command": "window-resize", "args": {
            "width": str(size[0]), "height": str(size[1])}}))


async def _send_stdin(ws: Any) -> None:
    """Stdin in a daemon thread (it may be a file, a pipe or a terminal that never ends)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return

    threading.Thread(target=reader, daemon=True).start()
    while data := await queue.get():
        await ws.send_bytes(data)
    await ws.send_str("")  # LXD's barrier: stdin ended


async def _recv(ws: Any, fd: int) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        data = msg.data
        while data:
            data = data[os.write(fd, data):]
    sys.stdout.flush()
