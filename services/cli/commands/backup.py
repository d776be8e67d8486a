"""``corral export`` / ``corral import``: instance backups in LXD's format.

Export does what ``lxc export`` does: make a server-side backup (an operation), download
its tarball (made while it is sent), delete the backup. A download that breaks off leaves
no file behind. Import sends the tarball as ``lxc import`` does (``application/octet-stream``
with ``X-LXD-name`` / ``X-LXD-pool``), so both clients exercise the same server path.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..client import APIError, Client, envelope, from_args
from ..parsing import command
from .image import _file_chunks, _progress

_CHUNK = 1024 * 1024
EXTENSIONS = {"none": ".tar", "gzip": ".tar.gz", "bzip2": ".tar.bz2", "xz": ".tar.xz",
              "zstd": ".tar.zst"}


async def _download(c: Client, path: str, target: Path) -> None:
    import aiohttp

    params = {"project": c.project} if c.project else {}
    conn = aiohttp.UnixConnector(path=str(c.socket))
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.get(f"http://corral{path}", params=params) as resp:
            if resp.status != 200:
                raise APIError((await resp.json()).get("error") or f"HTTP {resp.status}",
                               resp.status)
            with open(target, "wb") as f:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    f.write(chunk)


def export(args: Namespace) -> None:
    c = from_args(args)
    inst = quote(args.instance, safe="")
    body = {"name": "", "instance_only": args.instance_only,
            "optimized_storage": args.optimized_storage,
            "compression_algorithm": args.compression or ""}
    op = c.wait(c.request("POST", f"/1.0/instances/{inst}/backups", body)["operation"])
    backup = op["resources"]["backups"][0].rsplit("/", 1)[-1]
    target = Path(args.target) if args.target else \
        Path(args.instance + EXTENSIONS.get(args.compression or "gzip", ".tar.gz"))
    try:
        import asyncio  # here: `corral --help` and the parser stay light
        asyncio.run(_download(c, f"/1.0/instances/{inst}/backups/{quote(backup, safe='')}"
                                 "/export", target))
    except BaseException as exc:
        target.unlink(missing_ok=True)  # never a short file that looks whole
        if isinstance(exc, APIError):
            raise
        if isinstance(exc, Exception):
            raise APIError(f"The download of the backup failed: {exc}") from exc
        raise
    finally:
        try:
            c.wait(c.request("DELETE", f"/1.0/instances/{inst}/backups/"
                                       f"{quote(backup, safe='')}")["operation"])
        except APIError:
            pass
    print(f"Backup exported successfully to {target}")


def import_(args: Namespace) -> None:
    c = from_args(args)
    path = Path(args.file)
    if not path.is_file():
        raise APIError(f"{path}: no such file")
    headers = {"Content-Type": "application/octet-stream"}
    if args.name:
        headers["X-LXD-name"] = args.name
    if args.storage:
        headers["X-LXD-pool"] = args.storage
    with _progress(path.stat().st_size, "Importing instance") as tick:
        resp = c.raw("POST", "/1.0/instances", content=_file_chunks(path, tick),
                     headers=headers)
    op: dict[str, Any] = c.wait(envelope(resp, "/1.0/instances")["operation"])
    made = (op.get("resources") or {}).get("instances") or []
    print(f"Instance imported: {made[0].rsplit('/', 1)[-1] if made else args.name or ''}")


def register(sub: Any) -> None:
    p = command(sub, "export", export, description="Export an instance (and its "
                "snapshots) to a backup tarball in LXD's format.")
    p.add_argument("instance")
    p.add_argument("target", nargs="?", help="the file (default: INSTANCE.tar.gz)")
    p.add_argument("--instance-only", action="store_true", help="without the snapshots")
    p.add_argument("--optimized-storage", action="store_true",
                   help="btrfs send streams (btrfs pools; a plain tarball elsewhere)")
    p.add_argument("--compression", choices=sorted(EXTENSIONS),
                   help="compression (default gzip)")
    p = command(sub, "import", import_, description="Import an instance from a backup "
                "tarball (LXD's or Corral's).")
    p.add_argument("file")
    p.add_argument("name", nargs="?", help="the instance's name (default: the backup's)")
    p.add_argument("-s", "--storage", help="the storage pool (default: the backup's, or "
                   "the profile's root disk pool)")
