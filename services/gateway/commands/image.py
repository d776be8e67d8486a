"""``corral image``: list, show, import, export, delete, build busybox, and aliases.

Uploads send exactly what ``lxc image import`` sends (raw tarball or multipart form), so
the CLI and the stock client exercise the same server path.
"""


import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional
from urllib.parse import quote

import typer
import yaml

_CHUNK = 1024 * 1024


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{n}B"


def _fingerprint(c: Any, name: str) -> str:
    """An alias's target, or the name itself (a fingerprint or prefix), as lxc resolves."""
    from ..client import APIError

    try:
        return c.get(f"/1.0/images/aliases/{quote(name, safe='')}")["target"]
    except APIError as exc:
        if exc.code != 404:
            raise
    return name


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    """A progress callback: a rich bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


def _file_chunks(path: Path, tick: Any) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            tick(len(chunk))
            yield chunk


def upload(c: Any, meta: Path, rootfs: Optional[Path] = None, public: bool = False) -> str:
    """Upload an image file (or metadata + rootfs); return its fingerprint."""
    from shared.image.format import detect_format

    from ..client import APIError

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
    envelope = resp.json()
    if envelope.get("type") == "error":
        raise APIError(envelope.get("error") or "upload failed", envelope.get("error_code", 0))
    op = c.wait(envelope["operation"])
    return op["metadata"]["fingerprint"]


def ensure_aliases(c: Any, names: list[str], fingerprint: str) -> None:
    """Point each alias at the image, replacing an existing alias of that name (as lxc)."""
    existing = {a["name"] for a in c.get("/1.0/images/aliases", recursion=1)}
    for name in names:
        if name in existing:
            c.request("DELETE", f"/1.0/images/aliases/{quote(name, safe='')}")
        c.request("POST", "/1.0/images/aliases", {"name": name, "target": fingerprint})


async def _export(socket: Path, fingerprint: str, target: Path) -> list[Path]:
    import aiohttp

    from ..client import APIError

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


def register(app: typer.Typer) -> None:
    from ..cli import Format, client, emit

    image = typer.Typer(help="Manage images and image aliases.", no_args_is_help=True)
    alias = typer.Typer(help="Image aliases.", no_args_is_help=True)
    image.add_typer(alias, name="alias")
    build_app = typer.Typer(help="Build images locally and import them.", no_args_is_help=True)
    image.add_typer(build_app, name="build")
    app.add_typer(image, name="image")

    @image.command("list")
    def list_(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List images."""
        images = client().get("/1.0/images", recursion=1)
        rows = [{"alias": ", ".join(a["name"] for a in i.get("aliases") or []),
                 "fingerprint": i["fingerprint"][:12], "public": "yes" if i["public"] else "no",
                 "description": (i.get("properties") or {}).get("description", ""),
                 "architecture": i["architecture"], "type": i["type"].upper(),
                 "size": _size(i["size"]), "uploaded": i["uploaded_at"]}
                for i in sorted(images, key=lambda i: i["uploaded_at"])]
        emit(rows, ["alias", "fingerprint", "public", "description", "architecture", "type",
                    "size", "uploaded"], fmt, raw=images)

    @image.command("show")
    def show(name: str) -> None:
        """Show an image (by alias, fingerprint or unique prefix)."""
        c = client()
        fp = _fingerprint(c, name)
        print(yaml.safe_dump(c.get(f"/1.0/images/{quote(fp, safe='')}"), sort_keys=False),
              end="")

    @image.command("import")
    def import_(file: Path, rootfs: Optional[Path] = typer.Argument(None),
                aliases: List[str] = typer.Option([], "--alias", help="may repeat"),
                public: bool = typer.Option(False, "--public")) -> None:
        """Import an image file (unified), or a metadata tarball plus a rootfs (split)."""
        c = client()
        fp = upload(c, file, rootfs, public)
        print(f"Image imported with fingerprint: {fp}")
        if aliases:
            ensure_aliases(c, aliases, fp)

    @image.command("export")
    def export(name: str, target: Path = typer.Argument(Path("."))) -> None:
        """Write an image's file(s) into a directory (default: the current one)."""
        import asyncio

        c = client()
        fp = _fingerprint(c, name)
        target.mkdir(parents=True, exist_ok=True)
        for path in asyncio.run(_export(c.socket, fp, target)):
            print(path)

    @image.command("delete")
    def delete(name: str) -> None:
        """Delete an image (refused while an instance's volume still uses it)."""
        c = client()
        fp = _fingerprint(c, name)
        env = c.request("DELETE", f"/1.0/images/{quote(fp, safe='')}")
        c.wait(env["operation"])
        print(f"Image {name} deleted")

    @alias.command("list")
    def alias_list(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
        """List image aliases."""
        items = client().get("/1.0/images/aliases", recursion=1)
        rows = [{"alias": a["name"], "fingerprint": a["target"][:12], "type": a["type"].upper(),
                 "description": a.get("description", "")} for a in items]
        emit(rows, ["alias", "fingerprint", "type", "description"], fmt, raw=items)

    @alias.command("create")
    def alias_create(name: str, target: str,
                     description: str = typer.Option("", "--description")) -> None:
        """Create an alias NAME for the image TARGET (fingerprint or prefix)."""
        client().request("POST", "/1.0/images/aliases",
                         {"name": name, "target": target, "description": description})
        print(f"Alias {name} created")

    @alias.command("delete")
    def alias_delete(name: str) -> None:
        """Delete an image alias (the image stays)."""
        client().request("DELETE", f"/1.0/images/aliases/{quote(name, safe='')}")
        print(f"Alias {name} deleted")

    @build_app.command("busybox")
    def build_busybox(aliases: List[str] = typer.Option([], "--alias", help="may repeat"),
                      vm: bool = typer.Option(False, "--vm", help="a VM image")) -> None:
        """Build the busybox image (container, or with --vm a VM image: Debian's cloud
        kernel + busybox + the Corral agent) and import it (an identical image already
        there is kept; the aliases are pointed at it)."""
        from shared.errors import CorralError
        from shared.image.format import inspect_split, inspect_unified

        from ..client import APIError

        c = client()
        tmp_root = Path(os.environ.get("CORRAL_DIR") or c.socket.parent) / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=tmp_root) as tmp:
            try:
                if vm:
                    from shared.image.build_vm import build_busybox_vm

                    files = list(build_busybox_vm(Path(tmp), cache_dir=_kernel_cache(c)))
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
        if aliases:
            ensure_aliases(c, aliases, fp)


def _kernel_cache(c: Any) -> Path:
    """Where the downloaded VM kernel is kept between builds ($CORRAL_DIR/cache)."""
    return Path(os.environ.get("CORRAL_DIR") or c.socket.parent) / "cache" / "vm-kernel"
