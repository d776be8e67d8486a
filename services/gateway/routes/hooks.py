"""``/1.0/hooks``: Corral's automation hooks (API extension ``corral_hooks``).

Every row is one bus request to the hooks service; hooks are not per project (a hook's
``project`` field says which project's events it takes), so ``?project=`` is ignored.
``POST /1.0/hooks/<name>`` (a rename) is not offered: a hook's name is its consumer's and
its credential's.
"""

from __future__ import annotations

from ..routing import Route, ask, creation, item, listing

HOOKS = "/1.0/hooks"
HOOK = HOOKS + "/{name}"

ROUTES = [
    Route("GET", HOOKS, ask("hooks", "list", listing)),
    Route("POST", HOOKS, ask("hooks", "create", creation)),
    Route("GET", HOOK, ask("hooks", "get", item)),
    Route("PUT", HOOK, ask("hooks", "update", item)),
    Route("PATCH", HOOK, ask("hooks", "patch", item)),
    Route("DELETE", HOOK, ask("hooks", "delete", item)),
    Route("GET", HOOK + "/log", ask("hooks", "log", item)),
    # The hook's delivery of one made-up event (or {"event": {...}}), once, now.
    Route("POST", HOOK + "/test", ask("hooks", "test", item, timeout=60)),
]
