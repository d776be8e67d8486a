"""Projects (LXD's ``/1.0/projects``): records, config keys, features, effective project.

Why the instance service owns them: a project's limits and restrictions are checked when
an instance or a profile is created or changed, and both are this service's; a project
with ``features.profiles`` gets its own ``default`` profile, also this service's. Other
services ask ``corral.instance.project_get`` (the gateway does it once per request that
names a project other than ``default``, and resolves the effective project there).

A record is ``{name, description, config}`` in the KV bucket ``projects``, keyed by name.
``default`` always exists (it need not be stored; a stored one carries its config) and
has every feature. Project names follow LXD's rules, plus Corral's: letters, digits, ``.``
and ``-`` only, because an instance outside ``default`` is ``<project>_<name>`` on the
host (:func:`.names.host_name`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.api import check_etag, description, etag, url
from shared.errors import BadRequest, Conflict, Forbidden, NotFound
from shared.state import Store, key

from . import project_limits
from .names import PROJECT_NAME

DEFAULT = "default"
FEATURES = ("features.images", "features.profiles", "features.storage.volumes",
            "features.networks")
# LXD 5.0's defaults for a new project (features.networks stays off).
FEATURE_DEFAULTS = {"features.images": "true", "features.profiles": "true",
                    "features.storage.volumes": "true"}
# What each feature decides: which project's objects of that kind a project uses.
FEATURE_OF = {"images": "features.images", "profiles": "features.profiles",
              "volumes": "features.storage.volumes", "networks": "features.networks"}

_BOOL = ("true", "false", "1", "0", "yes", "no", "on", "off", "")


def _is_bool(v: str) -> bool:
    return v.lower() in _BOOL


def _is_uint(v: str) -> bool:
    return v == "" or (v.isdigit() and int(v) < 2**32)


def _is_size(v: str) -> bool:
    if v == "":
        return True
    try:
        project_limits.parse_size(v)
    except ValueError:
        return False
    return True


def _one_of(*allowed: str) -> Callable[[str], bool]:
    return lambda v: v in ("", *allowed)


_ALLOW_BLOCK = _one_of("allow", "block")
# The keys Corral takes; LXD keys it does not implement are refused by name.
KEYS: dict[str, Callable[[str], bool]] = {
    **{f: _is_bool for f in FEATURES},
    "limits.instances": _is_uint, "limits.containers": _is_uint,
    "limits.virtual-machines": _is_uint, "limits.cpu": _is_uint,
    "limits.processes": _is_uint, "limits.memory": _is_size, "limits.disk": _is_size,
    "restricted": _is_bool,
    "restricted.containers.nesting": _ALLOW_BLOCK,
    "restricted.containers.lowlevel": _ALLOW_BLOCK,
    "restricted.containers.privilege": _one_of("allow", "unprivileged", "isolated"),
    "restricted.virtual-machines.lowlevel": _ALLOW_BLOCK,
    "restricted.devices.disk": _one_of("allow", "block", "managed"),
    "restricted.snapshots": _ALLOW_BLOCK,
    "restricted.devices.disk.paths": lambda v: all(
        p.strip().startswith("/") for p in v.split(",") if p.strip()),
}


def true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "on")


def check_name(name: Any) -> str:
    """LXD's project name rules and messages, then Corral's stricter character set."""
    if not isinstance(name, str) or not name:
        raise BadRequest("No name provided")
    for bad, what in (("/", "slashes"), (" ", "spaces"), ("_", "underscores")):
        if bad in name:
            raise BadRequest(f"Project names may not contain {what}")
    if "'" in name or '"' in name:
        raise BadRequest("Project names may not contain quotes")
    if name == "*":
        raise BadRequest("Reserved project name")
    if name in (".", ".."):
        raise BadRequest(f'Invalid project name "{name}"')
    if not PROJECT_NAME.match(name):
        raise BadRequest(f'Invalid project name "{name}": use 1-63 letters, digits, "." '
                         'and "-", starting with a letter or digit')
    return name


def check_config(config: Any) -> dict[str, str]:
    """LXD's project key checks (``projectValidateConfig``), with its messages."""
    if config is None:
        return {}
    if not isinstance(config, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
        raise BadRequest("Invalid project config: expected a map of strings")
    for k, v in config.items():
        if k.startswith("user."):
            continue
        check = KEYS.get(k)
        if check is None:
            raise BadRequest(f'Invalid project configuration key "{k}"')
        if not check(v):
            raise BadRequest(f'Invalid project configuration key "{k}" value: "{v}"')
    if true(config.get("restricted")) and config.get("features.profiles", "").lower() \
            in ("false", "0", "no", "off"):
        raise BadRequest("Projects without their own profiles cannot be restricted")
    return dict(config)


def default_record() -> dict[str, Any]:
    return {"name": DEFAULT, "description": "Default LXD project",
            "config": {f: "true" for f in FEATURES}}


def project_etag(p: Mapping[str, Any]) -> str:
    return etag(p["name"], p.get("description", ""), p.get("config", {}))


def effective(record: Mapping[str, Any], kind: str) -> str:
    """The project whose ``kind`` objects (images, profiles, volumes, networks) the
    project of ``record`` uses: its own with the feature, else ``default``."""
    if record["name"] == DEFAULT or true(record.get("config", {}).get(FEATURE_OF[kind])):
        return record["name"]
    return DEFAULT


class Projects:
    """The ``projects`` bucket (cached: this service is its one writer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, name: str) -> dict[str, Any] | None:
        """The project's record (``default`` always), None when unknown; no round trip."""
        for p in self.store.cached():
            if p["name"] == name:
                return p
        return default_record() if name == DEFAULT else None

    def require(self, name: str) -> dict[str, Any]:
        found = self.find(name)
        if found is None:
            raise NotFound("Project not found")
        return found

    def effective(self, name: str, kind: str) -> str:
        """:func:`effective` of a project by name (404 for an unknown project)."""
        return effective(self.require(name), kind)

    def names(self) -> list[str]:
        return sorted({DEFAULT, *(p["name"] for p in self.store.cached())})

    @staticmethod
    def public(p: Mapping[str, Any], used_by: list[str]) -> dict[str, Any]:
        return {"name": p["name"], "description": p.get("description", ""),
                "config": p.get("config", {}), "used_by": used_by}

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = check_name(body.get("name"))
        if name == DEFAULT or self.find(name) is not None:
            raise Conflict(f'Failed creating project "{name}": A project named "{name}" '
                           "already exists")
        config = {**FEATURE_DEFAULTS, **check_config(body.get("config"))}
        check_config(config)
        rec = {"name": name, "description": description(body.get("description")),
               "config": config}
        await self.store.create(key(name), rec, f'Project "{name}"')
        return rec

    async def update(self, name: str, body: Mapping[str, Any], if_match: str | None,
                     patch: bool, in_use: bool,
                     check: Callable[[dict[str, str]], None]) -> dict[str, Any]:
        """PUT/PATCH. Features change only on an empty project (LXD), and never on
        ``default``; ``check`` tries the new config on the project's instances."""
        current = self.require(name)
        check_etag(if_match, project_etag(current))
        config = check_config(body.get("config")) if "config" in body or not patch else {}
        new_config = {**current["config"], **config} if patch else config
        if name != DEFAULT:
            for f in FEATURE_DEFAULTS:  # an omitted default feature keeps LXD's default
                new_config.setdefault(f, current["config"].get(f, "false"))
        check_config(new_config)
        changed = [f for f in FEATURES
                   if true(new_config.get(f)) != true(current["config"].get(f))]
        if changed and name == DEFAULT:
            raise BadRequest("You can't change the features of the default project")
        if changed and in_use:
            f = changed[0]
            state = "disabled" if true(current["config"].get(f)) else "enabled"
            raise BadRequest(f'Project feature "{f}" cannot be {state} on non-empty projects')
        check(new_config)
        desc = description(body.get("description", current.get("description", "")
                                    if patch else ""))
        rec = {"name": name, "description": desc, "config": new_config}
        await self.store.put(key(name), rec)
        return rec

    async def rename(self, name: str, new_name: Any, empty: bool) -> dict[str, Any]:
        if name == DEFAULT:
            raise Forbidden("The 'default' project cannot be renamed")
        current = self.require(name)
        new_name = check_name(new_name)
        if self.find(new_name) is not None:
            raise Conflict(f'A project named "{new_name}" already exists')
        if not empty:
            raise BadRequest("Only empty projects can be renamed")
        rec = {**current, "name": new_name}
        await self.store.create(key(new_name), rec, f'Project "{new_name}"')
        await self.store.delete(key(name))
        return rec

    async def delete(self, name: str, empty: bool) -> None:
        if name == DEFAULT:
            raise Forbidden("The 'default' project cannot be deleted")
        self.require(name)
        if not empty:
            raise BadRequest("Only empty projects can be removed")
        await self.store.delete(key(name))

    @staticmethod
    def url(name: str) -> str:
        return url("projects", name)
