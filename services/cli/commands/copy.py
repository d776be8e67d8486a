"""``corral copy / move / publish``: the requests ``lxc copy``, ``lxc move`` and ``lxc
publish`` send, for one server.

- copy: ``POST /1.0/instances`` with ``source.type: copy`` (``SRC`` or ``SRC/SNAP``); the
  server takes the source's config, devices and profiles; ``-s`` puts the root disk on
  another pool.
- move: a rename (``POST /1.0/instances/SRC {"name"}``, or a snapshot's), or with
  ``--storage`` one pool move (``{"migration": true, "pool"}``, LXD's instance_pool_move).
- publish: ``POST /1.0/images`` with ``source.type: instance|snapshot``; ``--force``
  stops a running instance first and starts it again afterwards, as ``lxc publish`` does.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import Client, UsageError, from_args
from ..parsing import command
from .instances import ipath, parse_pairs, random_name, set_state, wait_op


def _root_override(c: Client, source: str, pool: str) -> dict[str, dict[str, str]]:
    """The source's root disk (local or from a profile) on ``pool``, as a local device."""
    parent, _, snap = source.partition("/")
    inst = c.get(ipath(parent, f"/snapshots/{quote(snap, safe='')}" if snap else ""))
    for name, dev in (inst.get("expanded_devices") or {}).items():
        if dev.get("type") == "disk" and dev.get("path") == "/":
            return {name: {**(inst.get("devices") or {}).get(name, dev), "pool": pool}}
    return {"root": {"type": "disk", "path": "/", "pool": pool}}


def copy(args: Namespace) -> None:
    c = from_args(args)
    if "/" in args.source and (args.instance_only or args.refresh):
        raise UsageError("--instance-only and --refresh need an instance, not a snapshot")
    name = args.target or random_name()
    body: dict[str, Any] = {
        "name": name, "config": parse_pairs(args.config),
        "source": {"type": "copy", "source": args.source,
                   "instance_only": args.instance_only, "refresh": args.refresh}}
    if args.profile:
        body["profiles"] = list(args.profile)
    if args.no_profiles:
        body["profiles"] = []
    if args.ephemeral:
        body["ephemeral"] = True
    if args.storage:
        body["devices"] = _root_override(c, args.source, args.storage)
    wait_op(c, c.request("POST", "/1.0/instances", body), f"Copying {args.source}")
    if not args.target:
        print(f"Instance name is: {name}")
    if args.start:
        set_state(c, name, "start", f"Starting {name}")


def move(args: Namespace) -> None:
    c = from_args(args)
    parent, _, snap = args.source.partition("/")
    if args.storage:
        if snap:
            raise UsageError("Snapshots cannot be moved between pools")
        body = {"name": args.target or parent, "migration": True, "pool": args.storage,
                "instance_only": args.instance_only}
        wait_op(c, c.request("POST", ipath(parent), body), f"Moving {parent}")
        return
    if not args.target:
        raise UsageError("Give the new name, or --storage POOL")
    if snap:
        new_parent, _, new_snap = args.target.rpartition("/")
        if new_parent and new_parent != parent:
            raise UsageError("A snapshot keeps its instance: give INSTANCE/NEW or NEW")
        path = ipath(parent, f"/snapshots/{quote(snap, safe='')}")
        wait_op(c, c.request("POST", path, {"name": new_snap}), f"Renaming {args.source}")
        return
    wait_op(c, c.request("POST", ipath(parent), {"name": args.target}),
            f"Renaming {parent}")


def publish(args: Namespace) -> None:
    c = from_args(args)
    parent, _, snap = args.source.partition("/")
    restart = False
    if not snap:
        inst = c.get(ipath(parent))
        if inst.get("status") not in ("Stopped", None):
            if not args.force:
                raise UsageError("The instance is currently running. Use --force to have it "
                                 "stopped and restarted")
            set_state(c, parent, "stop", f"Stopping {parent}", force=True, timeout=-1)
            restart = True
    body: dict[str, Any] = {
        "source": {"type": "snapshot" if snap else "instance", "name": args.source},
        "public": args.public, "aliases": [{"name": a} for a in args.alias or []]}
    props = parse_pairs(args.properties)
    if props:
        body["properties"] = props
    if args.compression:
        body["compression_algorithm"] = args.compression
    try:
        done = wait_op(c, c.request("POST", "/1.0/images", body), f"Publishing {args.source}")
    finally:
        if restart:
            set_state(c, parent, "start", f"Starting {parent}")
    print(f"Instance published with fingerprint: {(done.get('metadata') or {})['fingerprint']}")


def register(sub: Any) -> None:
    p = command(sub, "copy", copy, description="Copy an instance (with its snapshots) or "
                "one of its snapshots (SOURCE/SNAPSHOT) into a new instance.")
    p.add_argument("source", help="INSTANCE or INSTANCE/SNAPSHOT")
    p.add_argument("target", nargs="?", help="the new instance's name (random if absent)")
    p.add_argument("--instance-only", action="store_true", help="without the snapshots")
    p.add_argument("--refresh", action="store_true",
                   help="bring an existing copy up to date (snapshots and content)")
    p.add_argument("-s", "--storage", help="the storage pool of the copy's root disk")
    p.add_argument("-c", "--config", action="append", metavar="KEY=VALUE")
    p.add_argument("-p", "--profile", action="append")
    p.add_argument("--no-profiles", action="store_true")
    p.add_argument("-e", "--ephemeral", action="store_true")
    p.add_argument("--start", action="store_true", help="start the copy")
    p = command(sub, "move", move, description="Rename an instance or a snapshot, or move "
                "an instance to another storage pool (--storage).")
    p.add_argument("source", help="INSTANCE or INSTANCE/SNAPSHOT")
    p.add_argument("target", nargs="?", help="the new name")
    p.add_argument("-s", "--storage", help="move the instance to this storage pool")
    p.add_argument("--instance-only", action="store_true",
                   help="with --storage: leave the snapshots behind (deleted)")
    p = command(sub, "publish", publish, description="Make an image from a stopped "
                "instance or from a snapshot (INSTANCE/SNAPSHOT).")
    p.add_argument("source", help="INSTANCE or INSTANCE/SNAPSHOT")
    p.add_argument("properties", nargs="*", metavar="KEY=VALUE",
                   help="image properties (replace the instance's)")
    p.add_argument("--alias", action="append", help="an alias for the new image")
    p.add_argument("--public", action="store_true")
    p.add_argument("-f", "--force", action="store_true",
                   help="stop a running instance first, start it again afterwards")
    p.add_argument("--compression", choices=["none", "gzip", "xz", "zstd"])
