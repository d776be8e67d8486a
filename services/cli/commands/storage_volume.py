"""``corral storage volume ...``: custom storage volumes, as ``lxc storage volume`` does.

A volume is named ``POOL VOLUME`` (``VOLUME/SNAPSHOT`` for a snapshot), copies and moves
``POOL/VOLUME[/SNAPSHOT]``. ``attach``/``detach`` change the instance's devices (a disk
``{pool, source, path}``), as the stock client does: the storage service only counts them
in ``used_by``. Imports the standard library only at the top (the CLI builds its parser
lazily, see ``commands/__init__.py``).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, Client, UsageError, envelope, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command

WRITABLE = ("description", "config")


def vpath(pool: str, volume: str = "") -> str:
    base = f"/1.0/storage-pools/{quote(pool, safe='')}/volumes/custom"
    return f"{base}/{quote(volume, safe='')}" if volume else base


def spath(pool: str, volume: str, snapshot: str = "") -> str:
    base = vpath(pool, volume) + "/snapshots"
    return f"{base}/{quote(snapshot, safe='')}" if snapshot else base


def split(name: str) -> tuple[str, str]:
    """``vol`` or ``vol/snap`` -> (volume, snapshot or "")."""
    vol, _, snap = name.partition("/")
    if not vol:
        raise UsageError(f"Invalid volume name {name!r}")
    return vol, snap


def pool_volume(arg: str) -> tuple[str, str]:
    """``POOL/VOLUME[/SNAPSHOT]`` -> (pool, "VOLUME[/SNAPSHOT]")."""
    pool, sep, rest = arg.partition("/")
    if not sep or not pool or not rest:
        raise UsageError(f"Expected POOL/VOLUME, got {arg!r}")
    return pool, rest


def pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"Bad key=value pair: {item!r}")
        out[k] = v
    return out


def wait(c: Client, env: dict[str, Any], what: str) -> None:
    from .instances import wait_op

    wait_op(c, env, what)


def read(c: Client, path: str) -> tuple[dict[str, Any], str]:
    resp = c.raw("GET", path)
    return envelope(resp, path)["metadata"], resp.headers.get("ETag", "")


def put(c: Client, path: str, body: dict[str, Any], etag: str) -> None:
    import json

    resp = c.raw("PUT", path, content=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", "If-Match": etag})
    envelope(resp, path)


# -- commands ---------------------------------------------------------------------------

def create(args: Namespace) -> None:
    from_args(args).request("POST", vpath(args.pool), {
        "name": args.volume, "type": "custom", "content_type": args.type,
        "config": pairs(args.config), "description": args.description})
    print(f"Storage volume {args.volume} created")


def list_(args: Namespace) -> None:
    vols = from_args(args).get(f"/1.0/storage-pools/{quote(args.pool, safe='')}/volumes",
                               recursion=1, **({"all-projects": "true"}
                                               if args.all_projects else {}))
    rows = []
    for v in vols:
        kind = f"{v['type']} (snapshot)" if "/" in v["name"] else v["type"]
        row = {"type": kind, "name": v["name"], "description": v.get("description", ""),
               "content-type": v.get("content_type") or "filesystem",
               "used by": len(v.get("used_by") or [])}
        if args.all_projects:
            row = {"project": v.get("project", "default"), **row}
        rows.append(row)
    rows.sort(key=lambda r: (r["type"], r["name"]))
    cols = ["type", "name", "description", "content-type", "used by"]
    emit(rows, (["project"] if args.all_projects else []) + cols, args.fmt, raw=vols)


def show(args: Namespace) -> None:
    vol, snap = split(args.volume)
    c = from_args(args)
    print_yaml(c.get(spath(args.pool, vol, snap) if snap else vpath(args.pool, vol)))


def get(args: Namespace) -> None:
    vol, snap = split(args.volume)
    obj = from_args(args).get(spath(args.pool, vol, snap) if snap else vpath(args.pool, vol))
    value = (obj.get("config") or {}).get(args.key)
    if value is not None:
        print(value)


def set_(args: Namespace) -> None:
    items = args.pairs
    if len(items) == 2 and "=" not in items[0]:
        items = [f"{items[0]}={items[1]}"]
    c = from_args(args)
    obj, etag = read(c, vpath(args.pool, args.volume))
    config = {**(obj.get("config") or {}), **pairs(items)}
    put(c, vpath(args.pool, args.volume), {"description": obj.get("description", ""),
                                           "config": config}, etag)


def unset(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, vpath(args.pool, args.volume))
    config = dict(obj.get("config") or {})
    if args.key not in config:
        raise APIError(f"Key {args.key!r} is not set on storage volume {args.volume}")
    config.pop(args.key)
    put(c, vpath(args.pool, args.volume), {"description": obj.get("description", ""),
                                           "config": config}, etag)


def edit(args: Namespace) -> None:
    import yaml

    from .config import edit_yaml

    c = from_args(args)
    obj, etag = read(c, vpath(args.pool, args.volume))
    doc = {k: obj.get(k) for k in WRITABLE}
    if not sys.stdin.isatty():
        new = yaml.safe_load(sys.stdin.read()) or {}
        if not isinstance(new, dict):
            raise APIError("Invalid YAML on stdin: expected a mapping")
    else:
        new = edit_yaml(doc)
    body = {**doc, **{k: v for k, v in new.items() if k in WRITABLE}}
    put(c, vpath(args.pool, args.volume), body, etag)


def rename(args: Namespace) -> None:
    vol, snap = split(args.volume)
    new_vol, new_snap = split(args.new_name)
    c = from_args(args)
    if snap:
        if new_vol != vol or not new_snap:
            raise UsageError("A snapshot is renamed within its volume: VOL/OLD VOL/NEW")
        wait(c, c.request("POST", spath(args.pool, vol, snap), {"name": new_snap}),
             "Renaming")
    else:
        if new_snap:
            raise UsageError("A volume cannot be renamed to a snapshot name")
        c.request("POST", vpath(args.pool, vol), {"name": new_vol})
    print(f"Renamed storage volume from {args.volume} to {args.new_name}")


def delete(args: Namespace) -> None:
    vol, snap = split(args.volume)
    c = from_args(args)
    if snap:
        wait(c, c.request("DELETE", spath(args.pool, vol, snap)), "Deleting")
    else:
        c.request("DELETE", vpath(args.pool, vol))
    print(f"Storage volume {args.volume} deleted")


def snapshot(args: Namespace) -> None:
    c = from_args(args)
    body: dict[str, Any] = {"name": args.snapshot or ""}
    if args.expiry:
        body["expires_at"] = args.expiry
    wait(c, c.request("POST", spath(args.pool, args.volume), body), "Snapshotting")


def restore(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, vpath(args.pool, args.volume))
    put(c, vpath(args.pool, args.volume), {"description": obj.get("description", ""),
                                           "config": obj.get("config") or {},
                                           "restore": args.snapshot}, etag)


def copy(args: Namespace) -> None:
    src_pool, src = pool_volume(args.source)
    dst_pool, dst = pool_volume(args.target)
    if "/" in dst:
        raise UsageError("The target of a copy is a volume, not a snapshot")
    c = from_args(args)
    src_vol, _snap = split(src)
    obj = c.get(vpath(src_pool, src_vol))
    env = c.request("POST", vpath(dst_pool), {
        "name": dst, "type": "custom", "content_type": obj.get("content_type"),
        "description": obj.get("description", ""), "config": obj.get("config") or {},
        "source": {"type": "copy", "pool": src_pool, "name": src,
                   "volume_only": args.volume_only, "refresh": args.refresh}})
    wait(c, env, "Copying")
    print("Storage volume copied successfully!")


def move(args: Namespace) -> None:
    src_pool, src = pool_volume(args.source)
    dst_pool, dst = pool_volume(args.target)
    if "/" in src or "/" in dst:
        raise UsageError("Only volumes move (not snapshots): POOL/VOLUME POOL/VOLUME")
    c = from_args(args)
    env = c.request("POST", vpath(src_pool, src), {"name": dst, "pool": dst_pool})
    wait(c, env, "Moving")
    print("Storage volume moved successfully!")


def attach(args: Namespace) -> None:
    """As ``lxc storage volume attach POOL VOL INSTANCE [DEVICE] [PATH]``: a PATCH of the
    instance's devices adding ``{type: disk, pool, source, path}``."""
    device, path = args.volume, ""
    if len(args.rest) == 1:
        path = args.rest[0]
    elif len(args.rest) == 2:
        device, path = args.rest
    elif args.rest:
        raise UsageError("Expected POOL VOLUME INSTANCE [DEVICE] [PATH]")
    c = from_args(args)
    ipath = f"/1.0/instances/{quote(args.instance, safe='')}"
    obj = c.get(ipath)
    if device in (obj.get("devices") or {}):
        raise APIError(f"The device already exists: {device}")
    dev = {"type": "disk", "pool": args.pool, "source": args.volume}
    if path:
        dev["path"] = path
    wait(c, c.request("PATCH", ipath, {"devices": {**obj.get("devices", {}), device: dev}}),
         "Attaching")


def detach(args: Namespace) -> None:
    c = from_args(args)
    ipath = f"/1.0/instances/{quote(args.instance, safe='')}"
    obj, etag = read(c, ipath)
    devices = dict(obj.get("devices") or {})
    names = [n for n, d in devices.items() if d.get("type") == "disk"
             and d.get("pool") == args.pool
             and d.get("source", "").removeprefix("custom/") == args.volume]
    if args.device:
        names = [n for n in names if n == args.device]
    if not names:
        raise APIError(f"No device found for storage volume {args.volume!r}")
    if len(names) > 1:
        raise APIError(f"More than one device uses storage volume {args.volume!r}: name "
                       f"one ({', '.join(sorted(names))})")
    devices.pop(names[0])
    body = {k: obj[k] for k in ("architecture", "config", "devices", "ephemeral",
                                "profiles", "description") if k in obj}
    body["devices"] = devices
    import json

    resp = c.raw("PUT", ipath, content=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", "If-Match": etag})
    wait(c, envelope(resp, ipath), "Detaching")


def export(args: Namespace) -> None:
    """As ``lxc storage volume export``: a backup made on the server, downloaded, then
    deleted there."""
    from datetime import datetime, timedelta, timezone

    c = from_args(args)
    expires = (datetime.now(timezone.utc) + timedelta(days=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    env = c.request("POST", vpath(args.pool, args.volume) + "/backups", {
        "name": "", "expires_at": expires, "volume_only": args.volume_only,
        "optimized_storage": args.optimized_storage,
        "compression_algorithm": args.compression or None})
    op = c.wait(env.get("operation") or "")
    backup = ((op.get("resources") or {}).get("backups") or [""])[0]
    path = f"{vpath(args.pool, args.volume)}/backups/{quote(backup, safe='')}"
    try:
        resp = c.raw("GET", path + "/export")
        if resp.status_code != 200:
            envelope(resp, path)
        with open(args.file, "wb") as fh:
            fh.write(resp.content)
    finally:
        try:
            c.wait(c.request("DELETE", path).get("operation") or "")
        except APIError:
            pass
    print("Backup exported successfully!")


def import_(args: Namespace) -> None:
    """As ``lxc storage volume import``: the tarball streamed to the server."""
    c = from_args(args)

    def chunks() -> Any:
        with open(args.file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    headers = {"Content-Type": "application/octet-stream"}
    if args.name:
        headers["X-LXD-name"] = args.name
    resp = c.raw("POST", vpath(args.pool), content=chunks(), headers=headers)
    wait(c, envelope(resp, vpath(args.pool)), "Importing")


def register(volume: Any) -> None:
    """The ``corral storage volume`` subcommands (``volume`` is its subparsers)."""
    p = command(volume, "list", list_, "List the volumes of a pool (custom volumes, their "
                "snapshots, instance and image volumes).")
    p.add_argument("pool")
    p.add_argument("--all-projects", action="store_true")
    add_format(p)
    p = command(volume, "create", create, "Create a custom volume: `corral storage volume "
                "create p1 data size=1GiB` (--type block for a VM disk).")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("config", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--type", choices=("filesystem", "block"), default="filesystem")
    p.add_argument("--description", default="")
    for name, run, what in (("show", show, "Show a volume or VOL/SNAPSHOT."),
                            ("delete", delete, "Delete a volume (refused while attached) "
                                               "or VOL/SNAPSHOT.")):
        p = command(volume, name, run, what)
        p.add_argument("pool")
        p.add_argument("volume")
    p = command(volume, "get", get, "Print one config key of a volume.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("key")
    p = command(volume, "set", set_, "Set config keys: KEY=VALUE... or KEY VALUE ('size' "
                "applies at once).")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    p = command(volume, "unset", unset, "Remove a config key.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("key")
    p = command(volume, "edit", edit, "Edit description and config in $EDITOR (or from "
                "stdin).")
    p.add_argument("pool")
    p.add_argument("volume")
    p = command(volume, "rename", rename, "Rename a volume, or VOL/OLD VOL/NEW a snapshot.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("new_name")
    p = command(volume, "snapshot", snapshot, "Snapshot a volume (name: snapN by default).")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("snapshot", nargs="?", default="")
    p.add_argument("--expiry", default="", metavar="TIME",
                   help="when the snapshot expires (RFC 3339, e.g. 2030-01-31T12:00:00Z)")
    p = command(volume, "restore", restore, "Restore a volume to one of its snapshots.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p = command(volume, "copy", copy, "Copy POOL/VOL[/SNAP] to POOL/VOL (another pool too).")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--volume-only", action="store_true", help="without the snapshots")
    p.add_argument("--refresh", action="store_true", help="update an existing copy")
    p = command(volume, "move", move, "Move or rename POOL/VOL to POOL/VOL.")
    p.add_argument("source")
    p.add_argument("target")
    p = command(volume, "attach", attach, "Attach a volume to an instance: POOL VOLUME "
                "INSTANCE [DEVICE] [PATH] (a disk device).")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("instance")
    p.add_argument("rest", nargs="*", metavar="[DEVICE] [PATH]")
    p = command(volume, "export", export, "Export a volume (and its snapshots) as a "
                "backup tarball in LXD's format.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("file", nargs="?", default="backup.tar.gz")
    p.add_argument("--volume-only", action="store_true", help="without the snapshots")
    p.add_argument("--optimized-storage", action="store_true",
                   help="btrfs send streams (btrfs pools)")
    p.add_argument("--compression", default="", help="gzip (default), bzip2, xz, zstd, none")
    p = command(volume, "import", import_, "Import a volume backup tarball (LXD's too).")
    p.add_argument("pool")
    p.add_argument("file")
    p.add_argument("name", nargs="?", default="")
    p = command(volume, "detach", detach, "Detach a volume from an instance.")
    p.add_argument("pool")
    p.add_argument("volume")
    p.add_argument("instance")
    p.add_argument("device", nargs="?", default="")
