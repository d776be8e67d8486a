"""Thread pools of their own for blocking work that may take long, each bounded.

Why: the event loop's default pool has min(32, CPUs + 4) threads (6 on a 2-core host) and
serves every short blocking call: lists, states, exec, liblxc lookups. A clean stop waits
up to its timeout (30 s by default, as long as the client asks) and a file transfer as
long as the file or the filesystem takes; a handful of them used to fill that pool, and
then ``lxc list`` and exec of every instance timed out. Here they queue among their own
kind, and beyond ``queue`` waiting calls the caller gets a 503 saying so instead of a
queue without end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from shared.errors import Unavailable

_T = TypeVar("_T")


class BoundedPool:
    """``await pool.run(fn, *args)`` in one of ``workers`` threads, or 503 when
    ``workers + queue`` calls are already running or waiting."""

    def __init__(self, what: str, workers: int, queue: int) -> None:
        self.what = what
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"corral-{what}")
        self.limit = workers + queue
        self.pending = 0

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.pending >= self.limit:
            raise Unavailable(f"Too many {self.what} under way: {self.pending} running or "
                              "waiting, try again")
        self.pending += 1
        try:
            call = functools.partial(contextvars.copy_context().run, fn, *args)
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        finally:
            self.pending -= 1


# File transfers: a few at a time (they are I/O on one disk), 32 more may wait.
FILES = BoundedPool("file transfers", workers=4, queue=32)
# Stops wait for the instance to shut down: many at once, each mostly asleep.
STOPS = BoundedPool("instance stops", workers=32, queue=256)
