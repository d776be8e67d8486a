"""What the instance service accepts for an instance's image metadata and templates
(``/1.0/instances/<name>/metadata[/templates]``, LXD's ``container_edit_metadata``).

Template contents are raw bytes (``lxc config template edit`` sends the file as it is), so
they travel as bytes in the message; they are small text files, bounded by
:data:`TEMPLATE_MAX`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.models import Request

TEMPLATE_MAX = 256 * 1024  # bytes: a template is a text file, not a payload


class TemplateRequest(Request):
    """One instance's templates: ``path`` names a file of ``templates/`` (empty: list)."""

    name: str
    path: str = ""
    content: bytes | None = None


class MetadataTemplate(BaseModel):
    """LXD's ``ImageMetadataTemplate``: when to render a template into which file."""

    model_config = ConfigDict(extra="ignore", strict=True)
    when: list[Literal["create", "copy", "start"]] = Field(default_factory=list)
    create_only: bool = False
    template: str = ""
    properties: dict[str, str] | None = None


class ImageMetadata(BaseModel):
    """LXD's ``ImageMetadata`` (``metadata.yaml``): what ``lxc config metadata edit`` sends."""

    model_config = ConfigDict(extra="ignore", strict=True)
    architecture: str = ""
    creation_date: int = 0
    expiry_date: int = 0
    properties: dict[str, str] | None = None
    templates: dict[str, MetadataTemplate | None] | None = None
