"""A service process's footprint at startup: optional extras left out, fewer malloc arenas.

Why: every Corral process pays the same imports (asyncio and ssl, nats, structlog,
pydantic and the shared models) before its own code, ~35 MiB of heap each; `make bench`
(bench/memory.py) measures the stack. Two libraries import optional extras that no
service uses, and cost memory in every process:

- structlog imports ``rich`` (and through it pygments) for its pretty console renderer
  when installed; services log JSON (shared/log.py). About 3.3 MiB per process.
- nats-py imports ``aiohttp`` for its websocket transport; the bus is ``nats://`` TCP.
  About 8 MiB in a process that does not otherwise use aiohttp (every service but the
  gateway and the image service, which import it themselves and pay nothing extra).

``prepare()`` imports those two libraries while the extras are hidden (they see the
ImportError they are written to handle), then un-hides them, so a later real ``import
aiohttp`` or ``import rich`` works as usual. It also caps glibc at two malloc arenas:
each thread that allocates (asyncio.to_thread workers, libvirt, liblxc callbacks) would
otherwise get an arena of its own, up to 8 per core, whose free pages are rarely given
back (what MALLOC_ARENA_MAX=2 does, set from inside so every launcher gets it).
"""

from __future__ import annotations

import ctypes
import sys

HIDDEN = ("rich", "better_exceptions", "aiohttp")
ARENAS = 2
_M_ARENA_MAX = -8  # malloc.h


def prepare(hide: tuple[str, ...] = HIDDEN, arenas: int = ARENAS) -> None:
    """Call first thing in a service's entry point, before anything imports the bus."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass
    hidden = [m for m in hide if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]  # makes `import m` fail
    try:
        import nats.aio.client  # noqa: F401
        import structlog  # noqa: F401
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
