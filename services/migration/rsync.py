"""rsync over a migration ``fs`` websocket, as LXD runs it (lxd/rsync/rsync.go).

The receiver is ``rsync --server`` with its stdin/stdout bridged to the websocket. The
sender is an rsync *client* whose remote shell (``-e``) is a netcat to a unix socket we
listen on (LXD uses ``lxd netcat`` to an abstract socket; here rsh.py). Each side sends a
barrier (empty text message) when its rsync's output ends, and a stream is over when its
rsync has exited and the peer's barrier came: then the next snapshot may use the same
websocket.

``progress`` is called with the bytes moved so far (LXD's ``fs_progress``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

from shared.errors import CorralError

from .channels import BARRIER, Channel

CHUNK = 128 * 1024
RSH = Path(__file__).with_name("rsh.py")
DRAIN_TIMEOUT = 30.0  # after rsync exited: the peer's barrier must come by then
Progress = Callable[[int], Awaitable[None]]


def feature_args(features: list[str]) -> list[str]:
    args: list[str] = []
    if "xattrs" in features:
        args += ["--xattrs", "--filter=-x security.selinux"]
    if "delete" in features:
        args.append("--delete")
    if "compress" in features:
        args += ["--compress", "--compress-level=2"]
    return args


async def _to_channel(reader: asyncio.StreamReader, chan: Channel,
                      moved: list[int], progress: Progress | None) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        await chan.send(data)
        moved[0] += len(data)
        if progress is not None:
            await progress(moved[0])
    await chan.barrier()


async def _from_channel(chan: Channel, write: Callable[[bytes], Awaitable[None]],
                        close: Callable[[], Awaitable[None]], moved: list[int],
                        progress: Progress | None) -> bool:
    """Feed the peer's bytes to rsync until its barrier (True) or the socket's end."""
    try:
        while True:
            msg = await chan.recv()
            if msg is None:
                return False
            if msg == BARRIER and isinstance(msg, str):
                return True
            try:
                await write(msg)  # type: ignore[arg-type]
            except (BrokenPipeError, ConnectionResetError):
                pass  # rsync ended first: keep reading up to the barrier
            moved[0] += len(msg)
            if progress is not None:
                await progress(moved[0])
    finally:
        try:
            await close()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass


async def _finish(proc: asyncio.subprocess.Process, tasks: list[asyncio.Task],
                  what: str) -> None:
    try:
        code = await proc.wait()
        stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
        if code not in (0, 24):  # 24: files vanished while sent (LXD accepts it too)
            raise CorralError(f"rsync {what} failed (exit {code}): {stderr.strip()[-500:]}",
                              500)
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
        if pending:
            raise CorralError(f"rsync {what}: the migration peer did not end the stream", 500)
        for t in done:
            t.result()
        if tasks[-1].result() is False:
            raise CorralError(f"rsync {what}: the migration peer closed the connection",
                              500)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def receive(path: Path, chan: Channel, features: list[str],
                  progress: Progress | None = None) -> None:
    """Receive one tree into ``path`` (rsync.Recv)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "rsync", "--server", "-vlogDtpre.iLsfx", "--numeric-ids", "--devices", "--partial",
        "--sparse", *feature_args(features), ".", str(path) + "/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin
    moved = [0]

    async def write(data: bytes) -> None:
        stdin.write(data)
        await stdin.drain()

    async def close() -> None:
        stdin.close()

    tasks = [asyncio.create_task(_to_channel(proc.stdout, chan, [0], None)),
             asyncio.create_task(_from_channel(chan, write, close, moved, progress))]
    await _finish(proc, tasks, f"receive into {path.name}")


async def send(path: Path, chan: Channel, features: list[str],
               progress: Progress | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Send the tree at ``path`` (rsync.Send); ``exclude``: top-level names left out (a
    VM's disk, which follows as a raw stream, as LXD's ``--exclude root.img``)."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
        asyncio.get_running_loop().create_future()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not accepted.done():
            accepted.set_result((r, w))
        else:
            w.close()

    with tempfile.TemporaryDirectory(prefix="corral-migrate-") as tmp:
        sock = os.path.join(tmp, "rsync.sock")
        server = await asyncio.start_unix_server(on_conn, sock)
        try:
            proc = await asyncio.create_subprocess_exec(
                "rsync", "-ar", "--devices", "--numeric-ids", "--partial", "--sparse",
                *feature_args(features), *[f"--exclude=/{n}" for n in exclude],
                str(path) + "/", "localhost:/tmp/foo",
                "-e", f"{sys.executable} -I -S {RSH} {sock}",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            try:
                reader, writer = await asyncio.wait_for(asyncio.shield(accepted), 10)
            except asyncio.TimeoutError:
                proc.kill()
                err = (await proc.stderr.read()).decode(errors="replace") \
                    if proc.stderr else ""
                await proc.wait()
                raise CorralError(f"rsync failed to start: {err.strip()[-300:]}",
                                  500) from None
            moved = [0]

            async def write(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            async def close() -> None:
                writer.close()  # the peer is done: rsh.py exits, then rsync

            tasks = [asyncio.create_task(_to_channel(reader, chan, moved, progress)),
                     asyncio.create_task(_from_channel(chan, write, close, [0], None))]
            try:
                await _finish(proc, tasks, f"send of {path.name}")
            finally:
                writer.close()
        finally:
            server.close()
