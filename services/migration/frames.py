"""Byte streams on a migration ``fs`` websocket that are not rsync: btrfs send streams and
a VM's raw disk, each ended by a barrier as LXD frames them.

LXD's btrfs driver (driver_btrfs_volumes.go migrateVolumeOptimized) runs ``btrfs send``
per subvolume (each snapshot against the one before it, the volume against the last
snapshot) straight onto the websocket and closes the frame (a barrier) after each; its
generic VFS driver sends a VM's block volume the same way after the config tree's rsync.
The receiving end here writes each stream to a file in the staging directory (the
layout of an optimized or VM backup): ``instance.backup_import`` then makes the volume
from it, whole or not at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from shared.errors import CorralError

from .channels import BARRIER, Channel

CHUNK = 256 * 1024
Progress = Callable[[int], Awaitable[None]]


async def send_btrfs(path: Path, parent: Path | None, chan: Channel,
                     progress: Progress | None = None) -> None:
    """``btrfs send [-p parent] path`` onto ``chan``, then a barrier. A failed send ends
    without the barrier: the peer sees the socket close, never a stream that looks whole."""
    proc = await asyncio.create_subprocess_exec(
        "btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        moved = 0
        while data := await proc.stdout.read(CHUNK):
            await chan.send(data)
            moved += len(data)
            if progress is not None:
                await progress(moved)
        err = (await proc.stderr.read()).decode(errors="replace")
        if await proc.wait() != 0:
            raise CorralError(f"btrfs send of {path.name} failed: {err.strip()[-500:]}", 500)
        await chan.barrier()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def send_reader(read: Callable[[int], bytes], chan: Channel,
                      progress: Progress | None = None) -> None:
    """What a blocking ``read(n)`` gives (a VM's raw disk) onto ``chan``, then a barrier."""
    moved = 0
    while data := await asyncio.to_thread(read, CHUNK):
        await chan.send(data)
        moved += len(data)
        if progress is not None:
            await progress(moved)
    await chan.barrier()


async def receive_file(chan: Channel, dest: Path, progress: Progress | None = None,
                       sparse: bool = False) -> int:
    """The peer's bytes up to its barrier, into ``dest``; their count. The socket ending
    first is a failure (the source died or gave up). ``sparse``: all-zero messages (a
    raw disk's unused space) become holes, not blocks on disk."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    moved = 0
    with dest.open("wb") as f:
        f.truncate(0)
        while True:
            msg = await chan.recv()
            if msg is None:
                raise CorralError(f"The migration source closed the connection during "
                                  f"{dest.name}", 500)
            if isinstance(msg, str):
                if msg == BARRIER:
                    f.truncate(moved)  # a trailing hole still counts
                    return moved
                msg = msg.encode()
            if sparse and msg.count(0) == len(msg):
                f.seek(len(msg), 1)
            else:
                await asyncio.to_thread(f.write, msg)
            moved += len(msg)
            if progress is not None:
                await progress(moved)
