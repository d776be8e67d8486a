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

It also makes ``import pyroute2`` lean (:func:`lean_pyroute2`): the package's
``__init__`` imports all of pyroute2 (IPDB, NDB and sqlite3, conntrack, nl80211, plan9...,
212 modules, ~8.5 MiB in corral-all) where the network service and the gateway use
``IPRoute`` and the netlink exceptions only (143 modules, ~4.4 MiB).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
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
    lean_pyroute2()
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


# What Corral takes from the top of pyroute2, and the submodule that defines it.
PYROUTE2_NAMES = {"IPRoute": "pyroute2.iproute.linux", "NetlinkError":
                  "pyroute2.netlink.exceptions"}


def lean_pyroute2(names: dict[str, str] = PYROUTE2_NAMES) -> None:
    """Stand in for the ``pyroute2`` package without running its ``__init__``.

    ``from pyroute2 import IPRoute`` then imports only ``pyroute2.iproute.linux``, and
    submodules (``pyroute2.netlink.exceptions``) import as usual. Any other name asked of
    the package runs the real ``__init__`` into this module first, so nothing that uses
    more of pyroute2 (``pyroute2.NDB``, ``__version__``) sees a difference but its memory.
    Nothing is done when pyroute2 is not installed or was imported already.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        return
    pkg = importlib.util.module_from_spec(spec)  # the module, its __init__ not run
    loader = spec.loader
    whole = False  # the real __init__ has run

    def __getattr__(name: str) -> object:
        nonlocal whole
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            setattr(pkg, name, value)
            return value
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is None:
            if not whole:  # anything else: the real package
                whole = True
                loader.exec_module(pkg)  # type: ignore[union-attr]
                if name in pkg.__dict__:
                    return pkg.__dict__[name]
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        return importlib.import_module(f"pyroute2.{name}")

    pkg.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = pkg
