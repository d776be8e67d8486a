"""An instance's image metadata and templates (LXD's ``container_edit_metadata``).

``lxc config metadata show/edit`` and ``lxc config template list/show/create/edit/delete``
read and write ``metadata.yaml`` and ``templates/`` beside the instance's ``rootfs/`` in
its root volume: the copy the image gave it at create (LXD's layout), which
:mod:`image_templates` renders from on every start. So an edit here changes what the next
start renders, and never the image.

Why the metadata is checked with the image format's own parser before it is written: a
``metadata.yaml`` that parser refuses would make every later start of the instance fail.
Template names are plain file names in ``templates/``: a ``/``, ``..`` or NUL is a 400, and
files are opened without following symlinks.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.api import check_etag, etag
from shared.errors import BadRequest, CorralError, NotFound
from shared.image.format import parse_metadata
from shared.messages.lxd import describe
from shared.messages.metadata import TEMPLATE_MAX, ImageMetadata, TemplateRequest
from shared.models import ObjectRequest, Reply
from shared.service import endpoint

from .records import instance_url

API_EXTENSIONS = ["container_edit_metadata"]
METADATA = "metadata.yaml"
TEMPLATES = "templates"


def root_of(rec: dict[str, Any]) -> Path:
    """The instance's root volume directory (where metadata.yaml and templates/ live)."""
    volume = rec.get("volume")
    if not volume or not Path(volume).is_dir():
        raise BadRequest(f"Instance {rec['name']!r} has no image metadata: its root volume "
                         "keeps no metadata.yaml")
    return Path(volume)


def template_name(path: str) -> str:
    """A file name of ``templates/`` (LXD refuses a ``/``; ``..``, ``.`` and NUL too)."""
    if not path:
        raise BadRequest("Missing path argument: give the template's file name (?path=)")
    if "/" in path or "\0" in path or path in (".", "..") or len(path) > 255:
        raise BadRequest(f"Invalid template filename {path[:80]!r}: a plain file name "
                         "without '/' or '..'")
    return path


def read_metadata(root: Path) -> dict[str, Any]:
    """LXD's ImageMetadata from metadata.yaml (empty when there is none)."""
    try:
        doc = yaml.safe_load((root / METADATA).read_bytes()) or {}
    except FileNotFoundError:
        doc = {}
    except yaml.YAMLError as exc:
        raise BadRequest(f"The instance's metadata.yaml is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        doc = {}
    templates = {p: {"when": [str(x) for x in (t or {}).get("when") or []],
                     "create_only": str((t or {}).get("create_only", False)).lower() == "true",
                     "template": str((t or {}).get("template") or ""),
                     "properties": {str(k): str(v)
                                    for k, v in ((t or {}).get("properties") or {}).items()}}
                 for p, t in (doc.get("templates") or {}).items()}
    return {"architecture": str(doc.get("architecture") or ""),
            "creation_date": int(doc.get("creation_date") or 0),
            "expiry_date": int(doc.get("expiry_date") or 0),
            "properties": {str(k): str(v) for k, v in (doc.get("properties") or {}).items()},
            "templates": templates}


def render_metadata(body: Any) -> bytes:
    """The YAML to write for ``body`` (LXD's ImageMetadata), or a 400 saying why not."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid metadata: expected a JSON object")
    try:
        meta = ImageMetadata.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(f"Invalid metadata: {describe(exc)}") from None
    doc = meta.model_dump()
    doc["properties"] = doc["properties"] or {}
    doc["templates"] = {p: {**t, "properties": t["properties"] or {}}
                        for p, t in (doc["templates"] or {}).items() if t is not None}
    data = yaml.safe_dump(doc, sort_keys=True).encode()
    try:
        parse_metadata(data)  # what every start reads: refuse what it would refuse
    except CorralError as exc:
        raise BadRequest(f"Invalid metadata: {exc.message}") from None
    return data


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically, never through a symlink planted in the volume."""
    tmp = path.with_name(f".{path.name}.corral-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read_template(root: Path, name: str) -> bytes:
    try:
        fd = os.open(root / TEMPLATES / name, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"Template {name!r} not found") from None
    except OSError as exc:
        raise BadRequest(f"Template {name!r} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read(TEMPLATE_MAX + 1)  # one byte more tells it is too large


def _list_templates(root: Path) -> list[str]:
    d = root / TEMPLATES
    if not d.is_dir() or d.is_symlink():
        return []
    return sorted(e.name for e in os.scandir(d) if e.is_file(follow_symlinks=False))


def _put_template(root: Path, name: str, data: bytes) -> None:
    d = root / TEMPLATES
    if d.is_symlink():
        raise BadRequest("The instance's templates directory is a symlink: refusing to "
                         "write through it")
    d.mkdir(mode=0o711, exist_ok=True)
    _write(d / name, data)


def _delete_template(root: Path, name: str) -> None:
    path = root / TEMPLATES / name
    if not path.is_file() or path.is_symlink():
        raise NotFound(f"Template {name!r} not found")
    path.unlink()


class MetadataMixin:
    """The endpoints; the service provides ``require_instance`` and ``events``."""

    async def _meta_root(self, project: str, name: str) -> tuple[dict[str, Any], Path]:
        rec = await self.require_instance(project, name)  # type: ignore[attr-defined]
        return rec, root_of(rec)

    @endpoint("metadata_get", ObjectRequest)
    async def metadata_get(self, req: ObjectRequest) -> Reply:
        _rec, root = await self._meta_root(req.project, req.name)
        meta = await asyncio.to_thread(read_metadata, root)
        return Reply(metadata=meta, etag=etag(meta))

    async def _metadata_write(self, req: ObjectRequest, patch: bool) -> Reply:
        rec, root = await self._meta_root(req.project, req.name)
        current = await asyncio.to_thread(read_metadata, root)
        check_etag(req.etag, etag(current))
        body = req.body or {}
        if patch and isinstance(body, dict):
            body = {**current, **body}
        data = render_metadata(body)
        await asyncio.to_thread(_write, root / METADATA, data)
        await self.events.lifecycle(  # type: ignore[attr-defined]
            "instance-metadata-updated", instance_url(rec), project=req.project,
            requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("metadata_put", ObjectRequest)
    async def metadata_put(self, req: ObjectRequest) -> Reply:
        return await self._metadata_write(req, patch=False)

    @endpoint("metadata_patch", ObjectRequest)
    async def metadata_patch(self, req: ObjectRequest) -> Reply:
        return await self._metadata_write(req, patch=True)

    @endpoint("template_get", TemplateRequest)
    async def template_get(self, req: TemplateRequest) -> Reply:
        """No ``path``: the file names (sync JSON); else the file's bytes (raw)."""
        _rec, root = await self._meta_root(req.project, req.name)
        if not req.path:
            return Reply(metadata=await asyncio.to_thread(_list_templates, root))
        data = await asyncio.to_thread(_read_template, root, template_name(req.path))
        if len(data) > TEMPLATE_MAX:
            raise BadRequest(f"Template {req.path!r} is larger than {TEMPLATE_MAX} bytes")
        return Reply(metadata={"data": data})

    @endpoint("template_put", TemplateRequest)
    async def template_put(self, req: TemplateRequest) -> Reply:
        rec, root = await self._meta_root(req.project, req.name)
        name = template_name(req.path)
        data = req.content or b""
        if len(data) > TEMPLATE_MAX:
            raise BadRequest(f"Template too large: at most {TEMPLATE_MAX} bytes")
        await asyncio.to_thread(_put_template, root, name, data)
        await self.events.lifecycle(  # type: ignore[attr-defined]
            "instance-metadata-template-created", instance_url(rec), project=req.project,
            context={"path": name}, requestor=req.requestor)
        return Reply(metadata=None)

    @endpoint("template_delete", TemplateRequest)
    async def template_delete(self, req: TemplateRequest) -> Reply:
        rec, root = await self._meta_root(req.project, req.name)
        name = template_name(req.path)
        await asyncio.to_thread(_delete_template, root, name)
        await self.events.lifecycle(  # type: ignore[attr-defined]
            "instance-metadata-template-deleted", instance_url(rec), project=req.project,
            context={"path": name}, requestor=req.requestor)
        return Reply(metadata=None)
