"""``corral image``: list, show, import, export, delete, build busybox, and aliases.

Uploads send exactly what ``lxc image import`` sends (raw tarball or multipart form), so
the CLI and the stock client exercise the same server path.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from argparse import Namespace
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from ..client import APIError, Client, envelope, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group

_CHUNK = 1024 * 1024


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{n}B"


def _fingerprint(c: Client, name: str) -> str:
    """An alias's target, or the name itself (a fingerprint or prefix), as lxc resolves."""
    try:
        return c.get(f"/1.0/images/aliases/{quote(name, safe='')}")["target"]
    except APIError as exc:
        if exc.code != 404:
            raise
    return name


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress callback: a rich bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


def _file_chunks(path: Path, tick: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            tick(len(chunk))
            yield chunk


def upload(c: Client, meta: Path, rootfs: Path | None = None, public: bool = False) -> str:
    """Upload an image file (or metadata + rootfs); return its fingerprint."""
    from shared.image.format import detect_format

    for p in (meta, rootfs):
        if p is not None and not p.is_file():
            raise APIError(f"{p}: no such file")
    headers = {"X-LXD-filename": meta.name}
    if public:
        headers["X-LXD-public"] = "true"
    total = meta.stat().st_size + (rootfs.stat().st_size if rootfs else 0)
    with _progress(total, "Transferring image") as tick:
        if rootfs is None:
            headers["Content-Type"] = "application/octet-stream"
            body: Iterator[bytes] = _file_chunks(meta, tick)
        else:
            boundary = uuid.uuid4().hex
            part = "rootfs.img" if detect_format(rootfs) == "qcow2" else "rootfs"
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"

            def parts() -> Iterator[bytes]:
                for name, path in (("metadata", meta), (part, rootfs)):
                    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                           f"filename=\"{path.name}\"\r\nContent-Type: "
                           "application/octet-stream\r\n\r\n").encode()
                    yield from _file_chunks(path, tick)
                    yield b"\r\n"
                yield f"--{boundary}--\r\n".encode()

            body = parts()
        resp = c.raw("POST", "/1.0/images", content=body, headers=headers)
    op = c.wait(envelope(resp, "/1.0/images")["operation"])
    return op["metadata"]["fingerprint"]


def ensure_aliases(c: Client, names: list[str], fingerprint: str) -> None:
    """Point each alias at the image, replacing an existing alias of that name (as lxc)."""
    existing = {a["name"] for a in c.get("/1.0/images/aliases", recursion=1)}
    for name in names:
        if name in existing:
            c.request("DELETE", f"/1.0/images/aliases/{quote(name, safe='')}")
        c.request("POST", "/1.0/images/aliases", {"name": name, "target": fingerprint})


async def _export(socket: Path, fingerprint: str, target: Path) -> list[Path]:
    import aiohttp

    written: list[Path] = []
    conn = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.get(f"http://corral/1.0/images/{quote(fingerprint, safe='')}"
                               "/export") as resp:
            if resp.status != 200:
                raise APIError((await resp.json()).get("error") or f"HTTP {resp.status}")
            if resp.content_type == "multipart/form-data":
                reader = aiohttp.MultipartReader.from_response(resp)
                while (part := await reader.next()) is not None:
                    assert isinstance(part, aiohttp.BodyPartReader)
                    out = target / Path(part.filename or part.name or "part").name
                    with open(out, "wb") as f:
                        while chunk := await part.read_chunk(_CHUNK):
                            f.write(chunk)
                    written.append(out)
            else:
                disp = resp.headers.get("Content-Disposition", "")
                name = disp.partition("filename=")[2].strip('"') or fingerprint
                out = target / Path(name).name
                with open(out, "wb") as f:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        f.write(chunk)
                written.append(out)
    return written


def _remote_images(remote: Any) -> list[dict[str, Any]]:
    """The images a remote offers, as LXD objects: a simplestreams tree read with the
    pull's own parser, a Corral/LXD's public images; an OCI registry has no listing."""
    import json

    from .. import remotes as rm

    if remote.protocol == "oci":
        raise APIError(f"Cannot list images of remote {remote.name!r}: an OCI registry has "
                       "no image listing; launch NAME:TAG from it directly "
                       f"(corral launch {remote.name}:alpine:3.20)")
    if remote.protocol == "lxd":
        env = json.loads(rm.http_get(remote, "/1.0/images?recursion=1"))
        return list(env.get("metadata") or [])
    import os

    from shared.errors import CorralError
    from shared.image import simplestreams as ss
    from shared.image.format import normalize_architecture

    try:
        index = ss.loads(rm.http_get(remote, "/streams/v1/index.json"), "index.json")
        docs = [ss.loads(rm.http_get(remote, "/" + path.lstrip("/")), path)
                for path in ss.product_paths(index)]
        catalog = ss.Catalog.from_documents(docs,
                                            normalize_architecture(os.uname().machine))
    except CorralError as exc:
        raise APIError(f"Remote {remote.name!r}: {exc.message}", exc.code) from None
    return [img.lxd() for img in catalog.images]


def list_(args: Namespace) -> None:
    target = getattr(args, "remote", None) or ""
    if target:
        from .. import remotes as rm

        remote, rest = rm.split(target if ":" in target else target + ":")
        if rest:
            raise APIError(f"Give the remote as {target.split(':')[0]}: (filters are not "
                           "supported)")
        images = (_remote_images(remote) if remote is not None
                  else from_args(args).get("/1.0/images", recursion=1))
    else:
        images = from_args(args).get("/1.0/images", recursion=1)
    rows = [{"alias": ", ".join(a["name"] for a in i.get("aliases") or []),
             "fingerprint": i["fingerprint"][:12], "public": "yes" if i["public"] else "no",
             "description": (i.get("properties") or {}).get("description", ""),
             "architecture": i["architecture"], "type": i["type"].upper(),
             "size": _size(i["size"]), "uploaded": i["uploaded_at"]}
            for i in sorted(images, key=lambda i: i["uploaded_at"])]
    emit(rows, ["alias", "fingerprint", "public", "description", "architecture", "type",
                "size", "uploaded"], args.fmt, raw=images)


def show(args: Namespace) -> None:
    c = from_args(args)
    fp = _fingerprint(c, args.name)
    print_yaml(c.get(f"/1.0/images/{quote(fp, safe='')}"))


def import_(args: Namespace) -> None:
    c = from_args(args)
    fp = upload(c, args.file, args.rootfs, args.public)
    print(f"Image imported with fingerprint: {fp}")
    if args.aliases:
        ensure_aliases(c, args.aliases, fp)


def export(args: Namespace) -> None:
    import asyncio

    c = from_args(args)
    fp = _fingerprint(c, args.name)
    args.target.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(_export(c.socket, fp, args.target)):
        print(path)


def copy(args: Namespace) -> None:
    from .. import remotes as rm
    from ..progress import wait_download

    if args.target not in ("local:", "local"):
        raise APIError(f"Cannot copy to {args.target!r}: images are copied to this server "
                       "(local:)")
    remote, name = rm.split(args.source)
    if remote is None or not name:
        raise APIError(f"Give the source as REMOTE:ALIAS (got {args.source!r})")
    c = from_args(args)
    body = {"source": remote.source(name, "virtual-machine" if args.vm else ""),
            "auto_update": args.auto_update, "public": args.public,
            "aliases": [{"name": a} for a in args.aliases]}
    env = c.request("POST", "/1.0/images", body)
    op = wait_download(c, env, "Copying the image")
    fp = (op.get("metadata") or {}).get("fingerprint", "")
    if args.aliases and fp:  # servers without image_create_aliases: make them here
        have = {a["name"] for a in c.get(f"/1.0/images/{fp}").get("aliases") or []}
        missing = [a for a in args.aliases if a not in have]
        if missing:
            ensure_aliases(c, missing, fp)
    print(f"Image copied successfully! (fingerprint: {fp})")


def refresh(args: Namespace) -> None:
    c = from_args(args)
    for name in args.names:
        fp = _fingerprint(c, name)
        env = c.request("POST", f"/1.0/images/{quote(fp, safe='')}/refresh")
        from ..progress import wait_download

        op = wait_download(c, env, f"Refreshing {name}")
        if (op.get("metadata") or {}).get("refreshed"):
            print(f"Image {name} refreshed successfully!")
        else:
            print(f"Image {name} already up to date.")


def delete(args: Namespace) -> None:
    c = from_args(args)
    fp = _fingerprint(c, args.name)
    env = c.request("DELETE", f"/1.0/images/{quote(fp, safe='')}")
    c.wait(env["operation"])
    print(f"Image {args.name} deleted")


def alias_list(args: Namespace) -> None:
    items = from_args(args).get("/1.0/images/aliases", recursion=1)
    rows = [{"alias": a["name"], "fingerprint": a["target"][:12], "type": a["type"].upper(),
             "description": a.get("description", "")} for a in items]
    emit(rows, ["alias", "fingerprint", "type", "description"], args.fmt, raw=items)


def alias_create(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/images/aliases", {
        "name": args.name, "target": args.target, "description": args.description})
    print(f"Alias {args.name} created")


def alias_delete(args: Namespace) -> None:
    from_args(args).request("DELETE", f"/1.0/images/aliases/{quote(args.name, safe='')}")
    print(f"Alias {args.name} deleted")


def build_busybox(args: Namespace) -> None:
    from shared.errors import CorralError
    from shared.image.format import inspect_split, inspect_unified

    c = from_args(args)
    corral_dir = Path(os.environ.get("CORRAL_DIR") or c.socket.parent)
    tmp_root = corral_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=tmp_root) as tmp:
        try:
            if args.vm:
                from shared.image.build_vm import build_busybox_vm

                files = list(build_busybox_vm(
                    Path(tmp), cache_dir=corral_dir / "cache" / "vm-kernel"))
                fp = inspect_split(*files).fingerprint
            else:
                from shared.image.build import build_busybox as build

                files = [build(Path(tmp))]
                fp = inspect_unified(files[0]).fingerprint
        except CorralError as exc:
            raise APIError(exc.message, exc.code) from None
        try:
            c.get(f"/1.0/images/{fp}")
            print(f"Image already present with fingerprint: {fp}")
        except APIError as exc:
            if exc.code != 404:
                raise
            fp = upload(c, *files)
            print(f"Image imported with fingerprint: {fp}")
    if args.aliases:
        ensure_aliases(c, args.aliases, fp)


def register(sub: Any) -> None:
    image = group(sub, "image")
    p = command(image, "list", list_, "List images (here, or of a remote: REMOTE:).")
    p.add_argument("remote", nargs="?", help="REMOTE: (see corral remote list)")
    add_format(p)
    p = command(image, "copy", copy, "Copy an image from a remote here (REMOTE:ALIAS "
                "local:).", "Pull an image from a remote (simplestreams, lxd or oci) into "
                "this server, showing the download's progress.")
    p.add_argument("source", help="REMOTE:ALIAS or REMOTE:FINGERPRINT")
    p.add_argument("target", nargs="?", default="local:", help="local: (the default)")
    p.add_argument("--alias", dest="aliases", action="append", default=[],
                   help="may repeat")
    p.add_argument("--auto-update", action="store_true",
                   help="refresh it from its source every images.auto_update_interval")
    p.add_argument("--public", action="store_true")
    p.add_argument("--vm", action="store_true", help="the virtual-machine image")
    p = command(image, "refresh", refresh, "Take the newer version of pulled images "
                "(by alias, fingerprint or prefix) from their source.")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = command(image, "show", show, "Show an image (by alias, fingerprint or unique prefix).")
    p.add_argument("name")
    p = command(image, "import", import_, "Import an image file (unified), or a metadata "
                "tarball plus a rootfs (split).")
    p.add_argument("file", type=Path)
    p.add_argument("rootfs", type=Path, nargs="?")
    p.add_argument("--alias", dest="aliases", action="append", default=[],
                   help="may repeat")
    p.add_argument("--public", action="store_true")
    p = command(image, "export", export, "Write an image's file(s) into a directory "
                "(default: the current one).")
    p.add_argument("name")
    p.add_argument("target", type=Path, nargs="?", default=Path("."))
    p = command(image, "delete", delete, "Delete an image (refused while an instance's "
                "volume still uses it).")
    p.add_argument("name")

    alias = group(image, "alias", "Image aliases.")
    p = command(alias, "list", alias_list, "List image aliases.")
    add_format(p)
    p = command(alias, "create", alias_create, "Create an alias NAME for the image TARGET "
                "(fingerprint or prefix).")
    p.add_argument("name")
    p.add_argument("target")
    p.add_argument("--description", default="")
    p = command(alias, "delete", alias_delete, "Delete an image alias (the image stays).")
    p.add_argument("name")

    build = group(image, "build", "Build images locally and import them.")
    p = command(build, "busybox", build_busybox, "Build the busybox image and import it.",
                "Build the busybox image (container, or with --vm a VM image: Debian's cloud "
                "kernel + busybox + the Corral agent) and import it (an identical image "
                "already there is kept; the aliases are pointed at it).")
    p.add_argument("--alias", dest="aliases", action="append", default=[],
                   help="may repeat")
    p.add_argument("--vm", action="store_true", help="a VM image")
