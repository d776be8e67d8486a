"""Copies, moves to another pool and publishing: ``POST /1.0/instances`` with
``source.type`` ``copy``, ``lxc move --storage``, and the instance side of ``lxc publish``.

A mixin of :class:`services.instance.service.InstanceService`.
"""

from __future__ import annotations

API_EXTENSIONS: list[str] = []


class CopyPublishMixin:
    """Copy, move and publish (the copy work of issue 10 fills this in)."""
