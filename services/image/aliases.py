"""Image aliases: LXD's ``/1.0/images/aliases`` CRUD over the ``image_aliases`` bucket.

An alias record is LXD's ``ImageAliasesEntry`` (name, description, target, type) with
``project``; ``target`` is always the full fingerprint, whatever prefix the client gave.
"""

from __future__ import annotations

import re
from typing import Any

from shared.api import check_etag, etag, listing, url
from shared.errors import BadRequest, Conflict
from shared.models import Reply, Requestor
from shared.state import Store, key, mutate

from . import records
from .context import ImageContext


def _str(body: dict[str, Any], field: str) -> str:
    value = body.get(field, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"Invalid {field}: expected a string")
    return value


# Whitespace and control characters: no client can type them in an alias.
_ALIAS_BAD = re.compile(r"[\s\x00-\x1f\x7f]")
ALIAS_MAX = 255


def validate_alias_name(name: str) -> str:
    """An alias name as LXD 5.0 takes it, slashes included (image servers name images
    ``debian/12``, ``busybox/1.36/default``; LXD's route is ``aliases/{name:.*}``).

    LXD 5.0 refuses only an empty name. We also refuse what would make the alias
    unreachable by its URL or the CLI: whitespace or control characters, an empty path
    segment (leading, trailing or doubled ``/``) or a ``.``/``..`` segment (a client or
    proxy normalises those away), and names longer than 255 characters."""
    if not name:
        raise BadRequest("No alias name provided")
    segments = name.split("/")
    if _ALIAS_BAD.search(name) or len(name) > ALIAS_MAX \
            or any(seg in ("", ".", "..") for seg in segments):
        raise BadRequest(f"Invalid alias name {name!r}: names may contain slashes between "
                         "non-empty parts (debian/12), but no spaces or control characters, "
                         "no '.' or '..' part, and are at most "
                         f"{ALIAS_MAX} characters")
    return name


def in_project(aliases: Store, project: str) -> list[dict[str, Any]]:
    return [a for a in aliases.cached() if a.get("project", "default") == project]


def view(alias: dict[str, Any]) -> dict[str, Any]:
    return {k: alias.get(k, "") for k in ("name", "description", "target", "type")}


def alias_etag(alias: dict[str, Any]) -> str:
    return etag(view(alias))


class Aliases:
    """The alias endpoints' logic, over the context's stores and events."""

    def __init__(self, ctx: ImageContext) -> None:
        self.ctx = ctx

    @property
    def store(self) -> Store:
        return self.ctx.aliases

    async def _event(self, action: str, name: str, project: str,
                     requestor: Requestor | None, **context: Any) -> None:
        await self.ctx.events.lifecycle(f"image-alias-{action}",
                                        url("images/aliases", name, project),
                                        project=project, context=context or None,
                                        requestor=requestor)

    def list(self, project: str, recursion: int, all_projects: bool = False) -> list[Any]:
        items = [a for a in self.store.cached()
                 if all_projects or a.get("project", "default") == project]
        items.sort(key=lambda a: a["name"])
        return listing("images/aliases", [(a["name"], view(a)) for a in items], recursion,
                       project)

    async def get(self, project: str, name: str) -> Reply:
        alias, _rev = await self.store.require(key(project, name), f"Image alias {name!r}")
        return Reply(metadata=view(alias), etag=alias_etag(alias))

    async def create(self, project: str, body: dict[str, Any],
                     requestor: Requestor | None) -> dict[str, Any]:
        name, target = _str(body, "name"), _str(body, "target")
        if not name or not target:
            raise BadRequest("name and target are required")
        validate_alias_name(name)
        _k, image = records.find(self.ctx.images, project, target)
        alias = {"name": name, "description": _str(body, "description"),
                 "target": image["fingerprint"], "type": image["type"], "project": project}
        try:
            await self.store.create(key(project, name), alias, f"Alias {name!r}")
        except Conflict:
            raise Conflict(f"Alias {name!r} already exists") from None
        await self._event("created", name, project, requestor, target=image["fingerprint"])
        return view(alias)

    async def update(self, project: str, name: str, body: dict[str, Any], if_match: str | None,
                     requestor: Requestor | None, replace: bool) -> None:
        """PUT (``replace``: target required, description reset) or PATCH."""
        k = key(project, name)
        current, _rev = await self.store.require(k, f"Image alias {name!r}")
        check_etag(if_match, alias_etag(current))
        target = _str(body, "target") if (replace or "target" in body) else current["target"]
        if not target:
            raise BadRequest("The target field is required")
        _ik, image = records.find(self.ctx.images, project, target)
        desc = _str(body, "description") if (replace or "description" in body) \
            else current.get("description", "")

        def change(a: dict[str, Any]) -> dict[str, Any]:
            return {**a, "target": image["fingerprint"], "type": image["type"],
                    "description": desc}

        await mutate(self.store, k, change, f"Image alias {name!r}")
        await self._event("updated", name, project, requestor, target=image["fingerprint"])

    async def rename(self, project: str, name: str, body: dict[str, Any],
                     requestor: Requestor | None) -> None:
        new = _str(body, "name")
        validate_alias_name(new)
        old_key = key(project, name)
        current, _rev = await self.store.require(old_key, f"Image alias {name!r}")
        if await self.store.get(key(project, new)) is not None:
            raise Conflict(f"Alias {new!r} already exists")
        try:
            await self.store.create(key(project, new), {**current, "name": new},
                                    f"Alias {new!r}")
        except Conflict:
            raise Conflict(f"Alias {new!r} already exists") from None
        await self.store.delete(old_key)
        await self._event("renamed", new, project, requestor, old_name=name)

    async def delete(self, project: str, name: str, requestor: Requestor | None) -> None:
        k = key(project, name)
        await self.store.require(k, f"Image alias {name!r}")
        await self.store.delete(k)
        await self._event("deleted", name, project, requestor)

    async def drop_for(self, project: str, fingerprint: str,
                       requestor: Requestor | None) -> None:
        """Remove every alias of ``project`` that points at a deleted image."""
        for alias in in_project(self.store, project):
            if alias.get("target") == fingerprint:
                await self.store.delete(key(project, alias["name"]))
                await self._event("deleted", alias["name"], project, requestor)
