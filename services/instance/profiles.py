"""Profiles: named bundles of config and devices that instances stack (LXD semantics).

Why a profile is checked like an instance: its config and devices end up in instances, so
a key or device an instance would refuse (a host-path disk, a raw.lxc line LXC cannot
load) is refused here with the same 400, and a change is tried against every instance
using the profile *before* it is saved (``check``): a profile is never stored in a shape
its instances cannot take, then "applied" as a log line only.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from shared.api import (
    check_etag,
    description,
    etag,
    string_map,
    url,
    validate_object_name,
)
from shared.errors import Conflict, NotFound
from shared.state import Store, key

from . import validate

# Tries a changed profile on the instances that use it; raises (400) to refuse the change.
ProfileCheck = Callable[[dict[str, Any]], Awaitable[None]]


def profile_etag(p: dict[str, Any]) -> str:
    return etag(p["name"], p.get("description", ""), p.get("config", {}), p.get("devices", {}))


def new_profile(body: dict[str, Any], project: str) -> dict[str, Any]:
    name = validate_object_name("profile", body.get("name"))
    return {
        "name": name,
        "description": description(body.get("description")),
        "config": validate.check_config(body.get("config")),
        "devices": validate.check_devices(body.get("devices")),
        "project": project,
    }


async def check_profile(profile: dict[str, Any]) -> None:
    """What needs LXC itself: raw.lxc lines it cannot load (instances' own checks come
    from the caller's ``check``)."""
    await validate.check_for_type("container", profile["config"])


class Profiles:
    def __init__(self, store: Store) -> None:
        self.store = store

    def public(self, p: dict[str, Any], used_by: list[str] | None = None) -> dict[str, Any]:
        return {"name": p["name"], "description": p.get("description", ""),
                "config": p.get("config", {}), "devices": p.get("devices", {}),
                "used_by": used_by or []}

    async def get(self, project: str, name: str) -> tuple[dict[str, Any], int]:
        found = await self.store.get(key(project, name))
        if found is None:
            raise NotFound("Profile not found")
        return found

    async def list(self, project: str) -> list[dict[str, Any]]:
        return [p for p in (await self.store.items()).values()
                if p.get("project", "default") == project]

    async def create(self, body: dict[str, Any], project: str) -> dict[str, Any]:
        profile = new_profile(body, project)
        await check_profile(profile)
        await self.store.create(key(project, profile["name"]), profile,
                                f"Profile {profile['name']!r}")
        return profile

    async def update(self, project: str, name: str, body: dict[str, Any], expected_etag:
                     str | None, patch: bool, check: ProfileCheck | None = None
                     ) -> dict[str, Any]:
        """PUT/PATCH; ``check`` tries the new profile on its instances before the save."""
        current, rev = await self.get(project, name)
        check_etag(expected_etag, profile_etag(current))
        new = dict(current)
        if patch:
            if "config" in body:
                new["config"] = validate.check_config(
                    {**current["config"], **string_map("config", body["config"])})
            if "devices" in body:
                new["devices"] = validate.check_devices(
                    {**current["devices"], **validate.check_devices(body["devices"])})
            if "description" in body:
                new["description"] = description(body["description"])
        else:
            new["config"] = validate.check_config(body.get("config"))
            new["devices"] = validate.check_devices(body.get("devices"))
            new["description"] = description(body.get("description"))
        if new["config"].get("raw.lxc", "") != current["config"].get("raw.lxc", ""):
            await check_profile(new)
        if check is not None:
            await check(new)
        await self.store.update(key(project, name), new, rev)
        return new

    async def rename(self, project: str, name: str, new_name: Any) -> dict[str, Any]:
        if name == "default":
            raise Conflict("The default profile cannot be renamed")
        new_name = validate_object_name("profile", new_name)
        current, _rev = await self.get(project, name)
        renamed = {**current, "name": new_name}
        await self.store.create(key(project, new_name), renamed, f"Profile {new_name!r}")
        await self.store.delete(key(project, name))
        return renamed

    async def delete(self, project: str, name: str, used_by: list[str]) -> None:
        if name == "default":
            raise Conflict("The default profile cannot be deleted")
        await self.get(project, name)
        if used_by:
            raise Conflict(f"Profile is currently in use by {', '.join(used_by)}")
        await self.store.delete(key(project, name))

    @staticmethod
    def url(name: str, project: str) -> str:
        return url("profiles", name, project)
