"""``corral profile list|show|create|edit|delete|add|remove``."""


from typing import Any
from urllib.parse import quote

import typer
import yaml

PROFILE_KEYS = ("config", "description", "devices")


def ppath(name: str) -> str:
    return f"/1.0/profiles/{quote(name, safe='')}"


def register(app: typer.Typer) -> None:
    from ..cli import Format, client, emit
    from ..client import APIError
    from .config import edit_yaml, read, write
    from .instances import ipath

    prof = typer.Typer(help="Manage profiles.", no_args_is_help=True)
    app.add_typer(prof, name="profile")

    @prof.command("list")
    def list_(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List profiles and how many instances use each."""
        items = client().get("/1.0/profiles", recursion=1)
        rows = [{"name": p["name"], "description": p.get("description", ""),
                 "used_by": len(p.get("used_by") or [])} for p in items]
        emit(rows, ["name", "description", "used_by"], fmt, raw=items)

    @prof.command("show")
    def show(name: str) -> None:
        """Show a profile as YAML."""
        print(yaml.safe_dump(client().get(ppath(name)), sort_keys=False), end="")

    @prof.command("create")
    def create(name: str, description: str = typer.Option("", "--description")) -> None:
        """Create an empty profile (fill it with `profile edit`)."""
        client().request("POST", "/1.0/profiles", {"name": name, "description": description})
        print(f"Profile {name} created")

    @prof.command("edit")
    def edit(name: str) -> None:
        """Edit a profile in $EDITOR, or from stdin when it is not a terminal."""
        import sys

        obj, etag = read(ppath(name))
        doc: dict[str, Any] = {k: obj.get(k) for k in PROFILE_KEYS}
        if not sys.stdin.isatty():
            new = yaml.safe_load(sys.stdin.read()) or {}
            if not isinstance(new, dict):
                raise APIError("Invalid YAML on stdin: expected a mapping")
        else:
            new = edit_yaml(doc)
        write(ppath(name), {**doc, **new}, etag, PROFILE_KEYS)

    @prof.command("delete")
    def delete(name: str) -> None:
        """Delete a profile (refused while instances use it)."""
        client().request("DELETE", ppath(name))
        print(f"Profile {name} deleted")

    @prof.command("add")
    def add(instance: str, profile: str) -> None:
        """Add a profile to an instance (applied after its current profiles)."""
        obj, etag = read(ipath(instance))
        if profile in obj["profiles"]:
            raise APIError(f"Profile {profile} is already applied to {instance}")
        obj["profiles"].append(profile)
        write(ipath(instance), obj, etag)
        print(f"Profile {profile} added to {instance}")

    @prof.command("remove")
    def remove(instance: str, profile: str) -> None:
        """Remove a profile from an instance."""
        obj, etag = read(ipath(instance))
        if profile not in obj["profiles"]:
            raise APIError(f"Profile {profile} isn't currently applied to {instance}")
        obj["profiles"].remove(profile)
        write(ipath(instance), obj, etag)
        print(f"Profile {profile} removed from {instance}")
