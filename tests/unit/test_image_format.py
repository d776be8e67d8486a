"""Unit tests of shared/image: metadata parsing, fingerprints, safe-unpack rules, templates.

Pure: tarballs are written to tmp by ``tarfile``, members owned by the user running the
test (so GNU tar may restore owners without root); no services, no root.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from shared.errors import BadRequest
from shared.image import format as fmt
from shared.image.templates import (
    apply_templates,
    instance_meta,
    pongo_to_jinja,
    render_template,
    resolve_in_root,
)

META = b"architecture: amd64\ncreation_date: 1700000000\nproperties:\n  release: 22.04\n"


def _tar(path: Path, members: list[tuple[str, bytes | None, dict]], mode: str = "w:gz"
         ) -> Path:
    """Members as (name, data or None for a directory, TarInfo attributes)."""
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tf:
        for name, data, kw in members:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.uid, ti.gid = 1700000000, os.getuid(), os.getgid()
            ti.type = tarfile.REGTYPE if data is not None else tarfile.DIRTYPE
            ti.mode = 0o644 if data is not None else 0o755
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data) if data is not None and ti.type == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return path


def _ti(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, linkname
    return ti


def _vet(*members: tarfile.TarInfo) -> None:
    seen: set[str] = set()
    for ti in members:
        fmt.vet_member(ti, seen, "img.tar")


# -- metadata and formats ------------------------------------------------------------------

def test_parse_metadata_keeps_strings_and_normalizes_architecture() -> None:
    meta = fmt.parse_metadata(META + b"templates:\n  /etc/hostname:\n    template: h.tpl\n"
                              b"    when: start\n    create_only: 'yes'\n    mode: '0600'\n")
    assert meta["architecture"] == "x86_64"
    assert meta["properties"] == {"release": "22.04"}  # not the float 22.04
    assert meta["created_at"].timestamp() == 1700000000 and meta["expires_at"] is None
    spec = meta["templates"]["/etc/hostname"]
    assert (spec.when, spec.create_only, spec.mode) == (["start"], True, 0o600)


@pytest.mark.parametrize("doc,msg", [
    (b"[1, 2]", "must be a mapping"),
    (b"architecture: vax\ncreation_date: 1\n", "Unknown architecture"),
    (b"architecture: arm64\n", "missing creation_date"),
    (b"architecture: arm64\ncreation_date: 1\ntemplates:\n  /a: {}\n", "needs a 'template'"),
    (b"architecture: arm64\ncreation_date: 1\ntemplates:\n  /a: {template: t,"
     b" create_only: maybe}\n", "true or false"),
])
def test_parse_metadata_refuses_bad_documents(doc: bytes, msg: str) -> None:
    with pytest.raises(BadRequest, match=msg) as e:
        fmt.parse_metadata(doc)
    assert e.value.code == 400


def test_architecture_aliases() -> None:
    assert [fmt.normalize_architecture(a) for a in ("amd64", "arm64", "ppc64el", "i386")] == \
        ["x86_64", "aarch64", "ppc64le", "i686"]


def test_detect_format_by_magic(tmp_path: Path) -> None:
    cases = {"gzip": b"\x1f\x8b\x08", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh9",
             "zstd": b"\x28\xb5\x2f\xfd", "squashfs": b"hsqs", "qcow2": b"QFI\xfb",
             "tar": b"\0" * 257 + b"ustar"}
    for kind, head in cases.items():
        (tmp_path / kind).write_bytes(head + b"\0" * 300)
        assert fmt.detect_format(tmp_path / kind) == kind
    (tmp_path / "junk").write_bytes(b"hello" * 100)
    with pytest.raises(BadRequest, match="not an image"):
        fmt.detect_format(tmp_path / "junk")


# -- fingerprints --------------------------------------------------------------------------

def test_fingerprints_as_lxd_computes_them(tmp_path: Path) -> None:
    """Unified: sha256 of the file. Split: sha256 of metadata bytes then rootfs bytes."""
    img = _tar(tmp_path / "u.tar.gz", [("metadata.yaml", META, {}), ("rootfs", None, {})])
    info = fmt.inspect_unified(img)
    assert info.fingerprint == hashlib.sha256(img.read_bytes()).hexdigest()
    assert (info.type, info.size) == ("container", img.stat().st_size)
    meta = _tar(tmp_path / "m.tar.xz", [("metadata.yaml", META, {})], "w:xz")
    root = tmp_path / "rootfs.img"
    root.write_bytes(b"QFI\xfb" + b"\1" * 512)
    info = fmt.inspect_split(meta, root)
    assert info.fingerprint == hashlib.sha256(meta.read_bytes() + root.read_bytes()).hexdigest()
    assert (info.type, info.rootfs_format) == ("virtual-machine", "qcow2")


def test_absolute_names_are_found_by_inspect(tmp_path: Path) -> None:
    img = _tar(tmp_path / "a.tar", [("/metadata.yaml", META, {}), ("/rootfs", None, {})], "w")
    assert fmt.inspect_unified(img).type == "container"


# -- safe unpack rules ---------------------------------------------------------------------

@pytest.mark.parametrize("members", [
    [_ti("/rootfs/etc/inittab")],
    [_ti("//rootfs/./etc/inittab")],
    [_ti("./rootfs/a/../b")],
    [_ti("/rootfs/bin/sh", tarfile.SYMTYPE, "/bin/busybox")],  # resolves inside the guest
    [_ti("/rootfs/etc/rel", tarfile.SYMTYPE, "../bin/busybox")],
    [_ti("/rootfs/etc/hard", tarfile.LNKTYPE, "/rootfs/etc/inittab")],
    [_ti("rootfs/etc/hard", tarfile.LNKTYPE, "./rootfs/etc/inittab")],
    [_ti("rootfs/l", tarfile.SYMTYPE, "/etc"), _ti("rootfs/h", tarfile.LNKTYPE, "rootfs/l")],
])
def test_vet_accepts(members: list[tarfile.TarInfo]) -> None:
    _vet(*members)


@pytest.mark.parametrize("members,msg", [
    ([_ti("../x")], "escapes"),
    ([_ti("/../x")], "escapes"),
    ([_ti("/rootfs/../../x")], "escapes"),
    ([_ti("..")], "escapes"),
    ([_ti("rootfs/l", tarfile.SYMTYPE, "../../.."), ], "outside"),
    ([_ti("/rootfs/l", tarfile.SYMTYPE, "/tmp"), _ti("/rootfs/l/x")], "through a symlink"),
    ([_ti("rootfs/l", tarfile.SYMTYPE, "/tmp"), _ti("/rootfs/l/d/x")], "through a symlink"),
    ([_ti("rootfs/h", tarfile.LNKTYPE, "../etc/passwd")], "hard link"),
    ([_ti("rootfs/h", tarfile.LNKTYPE, "/../etc/passwd")], "hard link"),
    ([_ti("/rootfs/l", tarfile.SYMTYPE, "/etc"),
      _ti("/rootfs/h", tarfile.LNKTYPE, "/rootfs/l/shadow")], "hard link"),
])
def test_vet_refuses(members: list[tarfile.TarInfo], msg: str) -> None:
    with pytest.raises(BadRequest, match=msg) as e:
        _vet(*members)
    assert e.value.code == 400 and "img.tar" in e.value.message


def test_unpack_absolute_names_like_relative_ones(tmp_path: Path) -> None:
    img = _tar(tmp_path / "abs.tar.gz", [
        ("/metadata.yaml", META, {}), ("/rootfs", None, {}), ("/rootfs/etc", None, {}),
        ("/rootfs/etc/inittab", b"::sysinit\n", {}),
        ("/rootfs/etc/hard", None, {"type": tarfile.LNKTYPE,
                                    "linkname": "/rootfs/etc/inittab"})])
    dest = fmt.unpack(img, tmp_path / "vol")
    assert (dest / "rootfs/etc/inittab").read_bytes() == b"::sysinit\n"
    assert (dest / "rootfs/etc/hard").stat().st_ino == (dest / "rootfs/etc/inittab").stat().st_ino
    assert sorted(p.name for p in dest.iterdir()) == ["metadata.yaml", "rootfs"]


def test_unpack_refusal_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    img = _tar(tmp_path / "evil.tar.gz", [
        ("metadata.yaml", META, {}), ("rootfs", None, {}),
        ("rootfs/l", None, {"type": tarfile.SYMTYPE, "linkname": str(out)}),
        ("rootfs/l/x", b"x", {})])
    with pytest.raises(BadRequest, match="symlink"):
        fmt.unpack(img, tmp_path / "vol")
    assert not (tmp_path / "vol").exists() and list(out.iterdir()) == []


# -- templates -----------------------------------------------------------------------------

def test_pongo_syntax_becomes_jinja() -> None:
    assert pongo_to_jinja('{{ a|default:"x" }}') == '{{ a|default("x") }}'
    assert pongo_to_jinja("{% for k, v in config %}") == \
        "{% for k, v in (config)|pongo_items %}"


def test_render_template_lxd_context() -> None:
    ctx = {"instance": {"name": "c1"}, "config": {"b": "2", "a": "1"}}
    assert render_template("{{ instance.name }}:{{ nope|default:'d' }}", ctx) == "c1:d"
    assert render_template("{% for k, v in config %}{{ k }}{{ v }}{% endfor %}", ctx) == "a1b2"
    assert render_template("{{ ().__class__ }}", ctx) == ""  # the sandbox hides internals
    for bad in ('{% include "/etc/passwd" %}', "{% if %}",
                "{{ ''.__class__.__mro__[1].__subclasses__() }}"):
        with pytest.raises(BadRequest):
            render_template(bad, ctx)


def test_instance_meta_strings() -> None:
    meta = instance_meta({"name": "c1", "architecture": "amd64", "ephemeral": True}, {})
    assert meta["architecture"] == "x86_64" and meta["ephemeral"] == "true"
    assert meta["privileged"] == "false" and meta["type"] == "container"
    with pytest.raises(BadRequest, match="name"):
        instance_meta({}, {})


def test_apply_templates_stays_in_rootfs(tmp_path: Path) -> None:
    rootfs, tdir, out = tmp_path / "rootfs", tmp_path / "templates", tmp_path / "out"
    for d in (rootfs / "etc", rootfs / "run", tdir, out):
        d.mkdir(parents=True)
    (tdir / "h.tpl").write_text("{{ container.name }}-{{ trigger }}\n")
    (rootfs / "etc/hostname").symlink_to("/run/hostname")
    (rootfs / "etc/esc").symlink_to(str(out / "f"))
    specs = {"/etc/hostname": {"template": "h.tpl", "when": ["create"]},
             "/etc/esc": {"template": "h.tpl", "when": ["create"]},
             "/etc/later": {"template": "h.tpl", "when": ["start"]}}
    done = apply_templates(rootfs, tdir, specs, "create", {"name": "c1"},
                           root_uid=os.getuid(), root_gid=os.getgid())
    assert done == ["/etc/hostname", "/etc/esc"]
    assert (rootfs / "run/hostname").read_text() == "c1-create\n"
    assert list(out.iterdir()) == [] and (rootfs / str(out).lstrip("/") / "f").is_file()
    assert not (rootfs / "etc/later").exists()
    assert resolve_in_root(rootfs, "/../../etc/hostname") == rootfs / "run/hostname"
