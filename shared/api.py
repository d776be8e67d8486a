"""Small helpers for LXD's API shapes that every service uses."""

from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import quote


def url(collection: str, name: str, project: str = "default") -> str:
    """``/1.0/instances/c1`` (with ``?project=`` outside the default project, as LXD)."""
    out = f"/1.0/{collection}/{quote(name, safe='')}"
    return out if project == "default" else f"{out}?project={quote(project, safe='')}"


def listing(collection: str, items: Iterable[tuple[str, dict[str, Any]]], recursion: int,
            project: str = "default") -> list[Any]:
    """LXD's list answer: URLs at recursion 0, the objects themselves above."""
    if recursion <= 0:
        return [url(collection, name, project) for name, _obj in items]
    return [obj for _name, obj in items]
