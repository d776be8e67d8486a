"""Render an image's file templates into an instance rootfs, as LXD's templateApplyNow does.

LXD renders pongo2 (Django-like) templates. We use a sandboxed jinja2 environment with the
few translations real LXD/distrobuilder templates need: ``{{ x|default:"y" }}`` filter
arguments, Django's falsy ``default``, ``for k, v in mapping`` and undefined names rendering
as empty text. There is no loader, so ``include``/``import``/``extends`` cannot read host
files (LXD bans those tags for the same reason).

Target paths are resolved inside the rootfs the way the instance will see them: symlinks are
followed with the rootfs as ``/`` and ``..`` stops at it, so no template can write outside.
"""

from __future__ import annotations

import os
import platform
import re
import stat
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequest, CorralError, Internal
from shared.image.format import TemplateSpec, normalize_architecture

if TYPE_CHECKING:
    from jinja2.sandbox import SandboxedEnvironment

TRIGGERS = ("create", "copy", "start")
_MAX_LINKS = 40

# pongo2 writes filter arguments as `|name:arg`; jinja2 wants `|name(arg)`.
_FILTER_ARG = re.compile(r"""\|\s*(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[\w.]+)""")
_FOR_PAIR = re.compile(r"(\{%-?\s*for\s+\w+\s*,\s*\w+\s+in\s+)([^%]+?)(\s*-?%\})")
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_BANNED = re.compile(r"\{%-?\s*(include|import|from|extends|ssi)\b")


def _django_default(value: Any, default: Any = "") -> Any:
    return value if value else default


def _pairs(value: Any) -> Any:
    return sorted(value.items()) if isinstance(value, Mapping) else value


@cache
def _env() -> SandboxedEnvironment:
    """Made at the first template rendered: jinja2 costs ~2 MiB in every process importing
    this module (the instance service), most of which never render one."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True,
                               undefined=jinja2.ChainableUndefined)
    env.filters.update(default=_django_default, default_if_none=lambda v, d="": d if v is None
                       else v, pongo_items=_pairs, capfirst=lambda s: str(s)[:1].upper()
                       + str(s)[1:])
    return env


@lru_cache(maxsize=128)
def _compiled(text: str) -> Any:
    """A template compiled once per text: an image's templates are rendered at every start
    of each of its instances, and compiling is most of a render's cost."""
    return _env().from_string(pongo_to_jinja(text))


def pongo_to_jinja(text: str) -> str:
    """Rewrite the pongo2-only syntax found in LXD image templates into jinja2."""
    def tag(m: re.Match[str]) -> str:
        t = _FILTER_ARG.sub(r"|\1(\2)", m.group(0))
        return _FOR_PAIR.sub(r"\1(\2)|pongo_items\3", t)
    return _TAG.sub(tag, text)


def render_template(text: str, context: Mapping[str, Any], name: str = "template") -> str:
    """Render one template string with LXD's context; BadRequest if the template is broken."""
    banned = _BANNED.search(text)
    if banned:
        raise BadRequest(f"Image template {name!r} uses {banned.group(1)!r}, which is not "
                         "allowed (it could read files from the host)")
    import jinja2

    try:
        return _compiled(text).render(dict(context))
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as e:
        raise BadRequest(f"Image template {name!r} cannot be rendered: {e}") from None


def resolve_in_root(root: Path, path: str) -> Path:
    """Resolve ``path`` as the instance would, with ``root`` as ``/`` (never escaping it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        cand = root.joinpath(*done, part)
        if cand.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise BadRequest(f"Template target {path!r}: too many levels of symlinks")
            target = os.readlink(cand)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def _as_str_flag(v: Any) -> str:
    if isinstance(v, str):
        return v
    return "true" if v else "false"


def instance_meta(instance: Mapping[str, Any], config: Mapping[str, str]) -> dict[str, str]:
    """Build LXD's ``container``/``instance`` template variable (string values)."""
    if not instance.get("name"):
        raise BadRequest("Applying templates needs the instance name")
    arch = instance.get("architecture") or platform.machine()
    priv = instance.get("privileged", config.get("security.privileged", "false") == "true")
    meta = {k: str(v) for k, v in instance.items()
            if k not in ("config", "devices") and isinstance(v, (str, int))}
    meta.update(name=str(instance["name"]), type=str(instance.get("type", "container")),
                architecture=normalize_architecture(arch),
                ephemeral=_as_str_flag(instance.get("ephemeral", False)),
                privileged=_as_str_flag(priv))
    return meta


def _read_template(templates_dir: Path, name: str) -> str:
    rel = os.path.normpath(name)
    if rel.startswith(("/", "..")) or rel == ".":
        raise BadRequest(f"Template file name {name!r} must stay inside templates/")
    src = templates_dir / rel
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        raise BadRequest(f"Image template file {name!r} is missing from templates/") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"Image template file {name!r} is not a regular file")
    return src.read_text(encoding="utf-8", errors="replace")


def _mkdirs(root: Path, target: Path, uid: int, gid: int) -> None:
    missing = []
    parent = target.parent
    while not parent.exists() and parent != root:
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        os.chown(d, uid, gid)


def _write(target: Path, text: str, spec: TemplateSpec, uid: int, gid: int) -> None:
    new = not target.exists()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
        if new:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o644)
        if spec.uid is not None or spec.gid is not None:
            os.fchown(fd, uid + spec.uid if spec.uid is not None else -1,
                      gid + spec.gid if spec.gid is not None else -1)
        if spec.mode is not None:
            os.fchmod(fd, spec.mode)
    finally:
        os.close(fd)


def apply_templates(rootfs: str | Path, templates_dir: str | Path,
                    metadata_templates: Mapping[str, Any], trigger: str,
                    instance: Mapping[str, Any], *, config: Mapping[str, str] | None = None,
                    devices: Mapping[str, Any] | None = None, root_uid: int = 0,
                    root_gid: int = 0) -> list[str]:
    """Render every template whose ``when`` holds ``trigger``; return the paths written.

    ``instance`` holds name, type, architecture, privileged, ephemeral and may carry the
    expanded ``config`` and ``devices`` (or pass them as keywords). ``root_uid``/``root_gid``
    are the host ids of the instance's root (non-zero for unprivileged, shifted rootfs).
    """
    if trigger not in TRIGGERS:
        raise BadRequest(f"Unknown template trigger {trigger!r}: use one of {', '.join(TRIGGERS)}")
    rootfs, templates_dir = Path(rootfs), Path(templates_dir)
    if not rootfs.is_dir():
        raise BadRequest(f"Instance rootfs {str(rootfs)!r} is not a directory")
    cfg = dict(config if config is not None else instance.get("config") or {})
    devs = dict(devices if devices is not None else instance.get("devices") or {})
    meta = instance_meta(instance, cfg)

    def config_get(key: Any, default: Any = None) -> Any:
        val = cfg.get(str(key))
        return default if val is None else str(val).rstrip("\r\n")

    written = []
    for path, raw in metadata_templates.items():
        spec = raw if isinstance(raw, TemplateSpec) else TemplateSpec.model_validate(raw)
        if trigger not in spec.when:
            continue
        target = resolve_in_root(rootfs, path)
        if target.is_dir():
            raise BadRequest(f"Template target {path!r} is a directory, not a regular file")
        if spec.create_only and target.exists():
            continue
        text = _read_template(templates_dir, spec.template)
        out = render_template(text, {
            "trigger": trigger, "path": path, "container": meta, "instance": meta,
            "config": cfg, "devices": devs, "properties": spec.properties,
            "config_get": config_get}, spec.template)
        try:
            _mkdirs(rootfs, target, root_uid, root_gid)
            _write(target, out, spec, root_uid, root_gid)
        except CorralError:
            raise
        except OSError as e:
            raise Internal(f"Writing template {spec.template!r} to {path!r} failed: {e}") from e
        written.append(path)
    return written


__all__ = ["TRIGGERS", "apply_templates", "instance_meta", "pongo_to_jinja", "render_template",
           "resolve_in_root"]
