"""LXD's image format: inspect unified/split images and unpack them into an image volume.

A *unified* image is one tarball holding ``metadata.yaml``, ``rootfs/`` (or ``rootfs.img``)
and optional ``templates/``; its fingerprint is the sha256 of the file. A *split* image is a
metadata tarball plus a rootfs (tarball, squashfs, or a qcow2 ``rootfs.img`` for VMs); LXD
hashes the metadata bytes followed by the rootfs bytes (``lxd/images.go`` getImgPostInfo),
so we do the same or fingerprints would not match images imported into real LXD.

Unpacking runs GNU ``tar`` (fast, keeps devices, owners, modes and xattrs) while Python's
``tarfile`` reads the very same bytes to vet each member, so a hostile archive is refused
with a clear error instead of trusting tar's heuristics alone.
"""

from __future__ import annotations

import hashlib
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml
from pydantic import BaseModel, Field, field_validator

from shared.errors import BadRequest, Conflict, CorralError, Internal

Progress = Callable[[int], None]

MAX_METADATA_BYTES = 8 * 1024 * 1024
_CHUNK = 1024 * 1024
# libyaml's loader when PyYAML has it: the same documents (every scalar a string), ~7x faster
_BASE_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)

# Canonical LXD architecture names and their aliases (shared/osarch/architectures.go).
_ARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "i686": ("i386", "i586", "386", "x86", "generic_32"),
    "x86_64": ("amd64", "amd64v3", "generic_64"),
    "armv6l": ("armel", "arm"),
    "armv7l": ("armhf", "armhfp", "armv7a_hardfp", "armv7", "armv7a_vfpv3_hardfp"),
    "armv8l": (),
    "aarch64": ("arm64", "arm64_generic"),
    "ppc": ("powerpc",),
    "ppc64": ("powerpc64",),
    "ppc64le": ("ppc64el",),
    "s390x": (),
    "mips": ("mipsel", "mipsle"),
    "mips64": ("mips64el", "mips64le"),
    "riscv32": (),
    "riscv64": (),
    "loongarch64": ("loong64",),
}
_ARCH_BY_NAME = {a: c for c, al in _ARCH_ALIASES.items() for a in (c, *al)}

# Tar flag telling GNU tar how to decompress stdin, and tarfile's stream mode for the same.
_TAR_FLAGS = {"gzip": ["-z"], "xz": ["-J"], "lzma": ["--lzma"], "bzip2": ["-j"], "tar": []}
_PY_MODES = {"gzip": "r|gz", "xz": "r|xz", "lzma": "r|xz", "bzip2": "r|bz2", "tar": "r|"}


def normalize_architecture(name: str) -> str:
    """Map an architecture name or alias (``amd64``) to LXD's canonical name (``x86_64``)."""
    fields = str(name or "").split()
    arch = _ARCH_BY_NAME.get(fields[0]) if fields else None
    if arch is None:
        raise BadRequest(f"Unknown architecture {name!r}: expected one of "
                         f"{', '.join(sorted(_ARCH_ALIASES))} (or an alias such as amd64)")
    return arch


class TemplateSpec(BaseModel):
    """One ``templates:`` entry of metadata.yaml (LXD's api.ImageMetadataTemplate)."""

    when: list[str] = Field(default_factory=list)
    create_only: bool = False
    template: str
    properties: dict[str, str] = Field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None

    @field_validator("properties", mode="before")
    @classmethod
    def _props_as_str(cls, v: Any) -> Any:
        return {str(k): "" if x is None else str(x) for k, x in v.items()} if isinstance(
            v, dict) else v

    @field_validator("when", mode="before")
    @classmethod
    def _when_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_octal(cls, v: Any) -> Any:
        return int(v, 8) if isinstance(v, str) else v


class ImageInfo(BaseModel):
    """What the image service needs to register an image, as LXD reports it."""

    fingerprint: str
    size: int
    architecture: str
    created_at: datetime
    expires_at: datetime | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    type: Literal["container", "virtual-machine"]
    filenames: list[str]
    rootfs_format: str = Field(description="tar, squashfs or qcow2 (how rootfs is stored)")


def detect_format(path: Path) -> str:
    """Name the container format by magic bytes, as LXD's DetectCompressionFile does."""
    try:
        with open(path, "rb") as f:
            head = f.read(263)
    except FileNotFoundError:
        raise BadRequest(f"Image file {str(path)!r} does not exist") from None
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[1:5] == b"7zXZ":
        return "xz" if head[0] == 0xFD else "lzma"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:4] == b"hsqs":
        return "squashfs"
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[257:262] == b"ustar":
        return "tar"
    raise BadRequest(f"{Path(path).name!r} is not an image: expected a tarball (plain, gzip, "
                     "xz, bzip2), a squashfs or a qcow2 file")


def _tar_format(path: Path) -> str:
    fmt = detect_format(path)
    if fmt not in _TAR_FLAGS and fmt != "zstd":
        raise BadRequest(f"{path.name!r} is a {fmt} file, not a tarball")
    return fmt


@contextmanager
def _tar_stream(path: Path, fmt: str) -> Iterator[tuple[BinaryIO, str]]:
    """(readable stream, its format) of a tarball: as stored, or, for zstd (which
    Python's tarfile cannot read; LXD publishes with it), decompressed by the ``zstd``
    tool into a plain tar stream."""
    if fmt != "zstd":
        with open(path, "rb") as f:
            yield f, fmt
        return
    if shutil.which("zstd") is None:
        raise BadRequest(f"{path.name!r} is zstd-compressed and the zstd tool is missing "
                         "(Debian package zstd); recompress it with xz or gzip")
    proc = subprocess.Popen(["zstd", "-d", "-c", "-q", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        yield proc.stdout, "tar"
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _sha256(paths: list[Path]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def _parse_bool(v: str, what: str) -> bool:
    low = v.strip().lower()
    if low in ("true", "yes", "on", "y", "1"):
        return True
    if low in ("false", "no", "off", "n", "0", ""):
        return False
    raise BadRequest(f"metadata.yaml: {what} must be true or false, not {v!r}")


def _epoch(raw: Any, what: str) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise BadRequest(f"metadata.yaml: {what} must be a Unix timestamp, not {raw!r}") from None


def parse_metadata(data: bytes) -> dict[str, Any]:
    """Parse and validate metadata.yaml into typed fields.

    Scalars are read as strings (BaseLoader), like Go's typed decoder, so ``release: 22.04``
    stays "22.04" instead of becoming a float.
    """
    try:
        doc = yaml.load(data, Loader=_BASE_LOADER)  # noqa: S506 - BaseLoader builds no objects
    except yaml.YAMLError as e:
        raise BadRequest(f"metadata.yaml is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("metadata.yaml must be a mapping with architecture and creation_date")
    created = _epoch(doc.get("creation_date", 0), "creation_date")
    if created == 0:
        raise BadRequest("metadata.yaml: missing creation_date")
    expiry = _epoch(doc.get("expiry_date", 0) or 0, "expiry_date")
    props = doc.get("properties") or {}
    tpls = doc.get("templates") or {}
    if not isinstance(props, dict) or not isinstance(tpls, dict):
        raise BadRequest("metadata.yaml: properties and templates must be mappings")
    templates: dict[str, TemplateSpec] = {}
    for path, spec in tpls.items():
        if not isinstance(spec, dict) or not spec.get("template"):
            raise BadRequest(f"metadata.yaml: template for {path!r} needs a 'template' file")
        spec = dict(spec)
        spec["create_only"] = _parse_bool(spec.get("create_only", "false"), "create_only")
        try:
            templates[path] = TemplateSpec.model_validate(spec)
        except ValueError as e:
            raise BadRequest(f"metadata.yaml: bad template entry {path!r}: {e}") from None
    utc = timezone.utc
    return {
        "architecture": normalize_architecture(doc.get("architecture", "")),
        "created_at": datetime.fromtimestamp(created, utc),
        "expires_at": datetime.fromtimestamp(expiry, utc) if expiry else None,
        "properties": {str(k): str(v) for k, v in props.items()},
        "templates": templates,
    }


def _member_name(name: str) -> str:
    """A member's path relative to the image root, as GNU tar (and so LXD) extracts it.

    Some image builders write absolute names (``/rootfs/etc/inittab``); tar strips the
    leading slashes and LXD accepts such images, so they mean the same as relative ones.
    ``..`` is kept here, for :func:`vet_member` to refuse.
    """
    return posixpath.normpath(name.lstrip("/") or ".")


def _scan_tarball(path: Path, fmt: str) -> tuple[bytes | None, str | None]:
    """Return (metadata.yaml bytes, image type) read from a tarball, stopping early."""
    meta, kind = None, None
    try:
        with _tar_stream(path, fmt) as (src, plain), \
                tarfile.open(fileobj=src, mode=_PY_MODES[plain]) as tf:
            for ti in tf:
                name = _member_name(ti.name)
                if name == "metadata.yaml":
                    if not ti.isreg():
                        raise BadRequest(f"{path.name}: metadata.yaml is not a regular file")
                    if ti.size > MAX_METADATA_BYTES:
                        raise BadRequest(f"{path.name}: metadata.yaml is too large")
                    meta = tf.extractfile(ti).read()  # type: ignore[union-attr]
                elif name == "rootfs" or name.startswith("rootfs/"):
                    kind = "container"
                elif name == "rootfs.img":
                    kind = "virtual-machine"
                if meta is not None and kind is not None:
                    break
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise BadRequest(f"{path.name!r} is not a readable tarball: {e}") from None
    return meta, kind


def inspect_unified(path: str | Path) -> ImageInfo:
    """Inspect a unified image tarball; fingerprint = sha256 of the file."""
    path = Path(path)
    fmt = _tar_format(path)
    meta, kind = _scan_tarball(path, fmt)
    if meta is None:
        raise BadRequest(f"{path.name!r} has no metadata.yaml: not an LXD image")
    if kind is None:
        raise BadRequest(f"{path.name!r} has no rootfs/ or rootfs.img; for a split image "
                         "pass the rootfs file too")
    fp, size = _sha256([path])
    return ImageInfo(fingerprint=fp, size=size, type=kind, filenames=[path.name],
                     rootfs_format="qcow2" if kind == "virtual-machine" else "tar",
                     **parse_metadata(meta))


def inspect_split(meta_path: str | Path, rootfs_path: str | Path) -> ImageInfo:
    """Inspect a split image; fingerprint = sha256(metadata bytes + rootfs bytes)."""
    meta_path, rootfs_path = Path(meta_path), Path(rootfs_path)
    meta, _ = _scan_tarball(meta_path, _tar_format(meta_path))
    if meta is None:
        raise BadRequest(f"{meta_path.name!r} has no metadata.yaml: not an LXD metadata tarball")
    rfmt = detect_format(rootfs_path)
    if rfmt == "zstd":
        raise BadRequest(f"{rootfs_path.name!r} is zstd-compressed; recompress it with xz")
    kind = "virtual-machine" if rfmt == "qcow2" else "container"
    fp, size = _sha256([meta_path, rootfs_path])
    return ImageInfo(fingerprint=fp, size=size, type=kind,
                     filenames=[meta_path.name, rootfs_path.name],
                     rootfs_format="tar" if rfmt in _TAR_FLAGS else rfmt,
                     **parse_metadata(meta))


# ---------------------------------------------------------------- unpacking


class _Tee:
    """File-like reader that copies every byte it hands out to a sink and counts progress."""

    def __init__(self, src: BinaryIO, sink: BinaryIO, tick: Callable[[int], None]) -> None:
        self.src, self.sink, self.tick = src, sink, tick

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n if n and n > 0 else _CHUNK)
        if data:
            self.sink.write(data)
            self.tick(len(data))
        return data


def _escapes(name: str) -> bool:
    """Whether a normalized relative path leaves the directory it is relative to."""
    return name == ".." or name.startswith("../")


def _through_symlink(name: str, symlinks: set[str]) -> bool:
    """Whether a parent directory of ``name`` is a symlink of the archive."""
    parts = name.split("/")
    return any("/".join(parts[:i]) in symlinks for i in range(1, len(parts)))


def vet_member(ti: tarfile.TarInfo, symlinks: set[str], archive: str) -> None:
    """Refuse a member that could write outside the extraction directory.

    ``symlinks`` collects the symlinks seen so far in the same archive, so a later member
    written through one of them is refused. Absolute names are relative to the image root
    (see :func:`_member_name`); absolute symlink targets are fine, they resolve inside the
    instance's root at run time.
    """
    raw = ti.name
    name = _member_name(raw)
    if _escapes(name):
        raise BadRequest(f"{archive}: member {raw!r} escapes the image directory")
    if _through_symlink(name, symlinks):
        raise BadRequest(f"{archive}: member {raw!r} would be written through a symlink")
    if ti.islnk():  # a hard link names another member; tar strips its leading "/" too
        target = _member_name(ti.linkname)
        if _escapes(target) or _through_symlink(target, symlinks):
            raise BadRequest(f"{archive}: hard link {raw!r} points outside the image")
    elif ti.issym():
        symlinks.add(name)
        if not ti.linkname.startswith("/"):  # absolute targets resolve inside the container
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), ti.linkname))
            if _escapes(target):
                raise BadRequest(f"{archive}: symlink {raw!r} -> {ti.linkname!r} points "
                                 "outside the image")


def _extract_tar(path: Path, dest: Path, tick: Callable[[int], None]) -> None:
    """Extract one tarball into dest with GNU tar while tarfile vets the same stream."""
    with _tar_stream(path, _tar_format(path)) as (src, fmt):
        _extract_stream(src, fmt, path, dest, tick)


def _extract_stream(src: BinaryIO, fmt: str, path: Path, dest: Path,
                    tick: Callable[[int], None]) -> None:
    cmd = ["tar", "-x", *_TAR_FLAGS[fmt], "--restrict", "--numeric-owner", "--same-owner",
           "--same-permissions", "--xattrs", "--xattrs-include=*", "--acls",
           "-C", str(dest), "-f", "-"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None
        try:
            tee = _Tee(src, proc.stdin, tick)
            symlinks: set[str] = set()
            with tarfile.open(fileobj=tee, mode=_PY_MODES[fmt]) as tf:  # type: ignore[arg-type]
                for ti in tf:
                    vet_member(ti, symlinks, path.name)
            while tee.read(_CHUNK):
                pass
            proc.stdin.close()
        except BrokenPipeError:
            pass  # tar quit early; its exit status and stderr explain why
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            proc.kill()
            proc.wait()
            raise BadRequest(f"{path.name!r} is not a readable tarball: {e}") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()[-2000:]
            raise Internal(f"Unpacking {path.name!r} failed: {msg or 'tar exited with an error'}")


def _copy(src: Path, dst: Path, tick: Callable[[int], None]) -> None:
    with open(src, "rb") as i, open(dst, "wb") as o:
        while chunk := i.read(_CHUNK):
            o.write(chunk)
            tick(len(chunk))


def _unsquash(path: Path, dest: Path) -> None:
    res = subprocess.run(["unsquashfs", "-f", "-n", "-d", str(dest), str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise Internal(f"Unpacking squashfs {path.name!r} failed: {res.stderr.strip()[-2000:]}")


def _check_metadata_files(dest: Path) -> None:
    """Like LXD: metadata.yaml and templates must be regular files, never symlinks."""
    meta = dest / "metadata.yaml"
    if not meta.exists() and not meta.is_symlink():
        raise BadRequest("The image has no metadata.yaml")
    paths = [meta, dest / "templates"]
    tdir = dest / "templates"
    if tdir.is_dir() and not tdir.is_symlink():
        paths += list(tdir.iterdir())
    for p in paths:
        if p.is_symlink():
            raise BadRequest(f"Image file {p.relative_to(dest)} is a symlink; refusing it")


def unpack(meta_path: str | Path, dest: str | Path, rootfs_path: str | Path | None = None,
           progress: Progress | None = None) -> Path:
    """Unpack an image into ``dest`` as LXD lays out an image volume.

    ``dest/metadata.yaml``, ``dest/templates/`` and ``dest/rootfs/`` (containers) or
    ``dest/rootfs.img`` (VMs, kept as the given qcow2 for the storage driver to convert).
    ``dest`` must be missing or empty; on failure everything written is removed again.
    ``progress(percent)`` is called whenever the whole-number percentage of input read grows.
    """
    meta_path, dest = Path(meta_path), Path(dest)
    rootfs = Path(rootfs_path) if rootfs_path is not None else None
    files = [meta_path] + ([rootfs] if rootfs else [])
    for f in files:
        if not f.is_file():
            raise BadRequest(f"Image file {str(f)!r} does not exist")
    created = not dest.exists()
    if not created and any(dest.iterdir()):
        raise Conflict(f"Unpack target {str(dest)!r} is not empty")
    total = sum(f.stat().st_size for f in files) or 1
    state = {"done": 0, "pct": -1}

    def tick(n: int) -> None:
        state["done"] += n
        pct = min(100, state["done"] * 100 // total)
        if progress and pct > state["pct"]:
            state["pct"] = pct
            progress(pct)

    try:
        dest.mkdir(parents=True, exist_ok=True)
        tick(0)
        _extract_tar(meta_path, dest, tick)
        if rootfs is not None:
            rfmt = detect_format(rootfs)
            if rfmt == "qcow2":
                _copy(rootfs, dest / "rootfs.img", tick)
            elif rfmt == "squashfs":
                _unsquash(rootfs, dest / "rootfs")
                tick(rootfs.stat().st_size)
            else:
                (dest / "rootfs").mkdir(mode=0o755, exist_ok=True)
                _extract_tar(rootfs, dest / "rootfs", tick)
        _check_metadata_files(dest)
        if not (dest / "rootfs").is_dir() and not (dest / "rootfs.img").is_file():
            raise BadRequest(f"{meta_path.name!r} holds no rootfs; pass the rootfs file too")
        tick(total)
    except BaseException as e:
        _clean(dest, created)
        if isinstance(e, CorralError) or not isinstance(e, OSError):
            raise
        raise Internal(f"Unpacking image into {str(dest)!r} failed: {e}") from e
    return dest


def _clean(dest: Path, remove_dir: bool) -> None:
    if remove_dir:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


__all__ = ["ImageInfo", "TemplateSpec", "detect_format", "inspect_split", "inspect_unified",
           "normalize_architecture", "parse_metadata", "unpack", "vet_member"]
