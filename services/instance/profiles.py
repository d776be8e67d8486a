"""Profiles: named bundles of config and devices that instances stack (LXD semantics)."""

from __future__ import annotations

from typing import Any

from shared.api import (
    check_etag,
    description,
    devices_map,
    etag,
    string_map,
    url,
    validate_object_name,
)
from shared.errors import Conflict, NotFound
from shared.state import Store, key


def profile_etag(p: dict[str, Any]) -> str:
    return etag(p["name"], p.get("description", ""), p.get("config", {}), p.get("devices", {}))


def new_profile(body: dict[str, Any], project: str) -> dict[str, Any]:
    name = validate_object_name("profile", body.get("name"))
    return {
        "name": name,
        "description": description(body.get("description")),
        "config": string_map("config", body.get("config")),
        "devices": devices_map(body.get("devices")),
        "project": project,
    }


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
        await self.store.create(key(project, profile["name"]), profile,
                                f"Profile {profile['name']!r}")
        return profile

    async def update(self, project: str, name: str, body: dict[str, Any], expected_etag:
                     str | None, patch: bool) -> dict[str, Any]:
        current, rev = await self.get(project, name)
        check_etag(expected_etag, profile_etag(current))
        new = dict(current)
        if patch:
            if "config" in body:
                new["config"] = {**current["config"], **string_map("config", body["config"])}
            if "devices" in body:
                new["devices"] = {**current["devices"], **devices_map(body["devices"])}
            if "description" in body:
                new["description"] = description(body["description"])
        else:
            new["config"] = string_map("config", body.get("config"))
            new["devices"] = devices_map(body.get("devices"))
            new["description"] = description(body.get("description"))
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
