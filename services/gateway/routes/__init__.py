"""Route modules, one per resource (instances, images, storage, networks, ...).

Each module defines ``register(router, gateway)`` and, optionally, ``PATHS``: the list
paths it serves itself (so the gateway's generic list route steps aside). Modules are
found by name, so adding a resource touches no shared file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_cache: list[ModuleType] | None = None


def modules() -> list[ModuleType]:
    global _cache
    if _cache is None:
        _cache = [importlib.import_module(f"{__name__}.{m.name}")
                  for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]
    return _cache


def overrides(path: str) -> bool:
    return any(path in getattr(m, "PATHS", ()) for m in modules())
