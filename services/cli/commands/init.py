"""``corral init --auto``: the defaults a fresh host needs, like ``lxd init --auto``.

Creates what is absent, touches nothing that exists (so ``make up`` can run it every
time): the ``default`` storage pool (btrfs on a loop file when the kernel has btrfs, else
dir), the ``corralbr0`` bridge with a free private subnet, DHCP/DNS and NAT, and the
``default`` profile with a root disk on that pool and ``eth0`` on that bridge.
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..client import APIError, Client, UsageError, from_args
from ..parsing import command

DEFAULT_POOL = "default"
DEFAULT_NETWORK = "corralbr0"
DEFAULT_PROFILE = "default"


def has_btrfs() -> bool:
    try:
        return any(line.split()[-1] == "btrfs"
                   for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def exists(api: Client, path: str) -> bool:
    try:
        api.get(path)
        return True
    except APIError as exc:
        if exc.code == 404:
            return False
        raise


def init(args: Namespace) -> None:
    if not args.auto:
        raise UsageError("only `corral init --auto` exists for now")
    api = from_args(args)
    if not exists(api, f"/1.0/storage-pools/{DEFAULT_POOL}"):
        body = ({"name": DEFAULT_POOL, "driver": "btrfs", "config": {"size": args.pool_size}}
                if has_btrfs() else {"name": DEFAULT_POOL, "driver": "dir"})
        api.request("POST", "/1.0/storage-pools", body)
        print(f"Storage pool {DEFAULT_POOL} created ({body['driver']})")
    if not exists(api, f"/1.0/networks/{args.network}"):
        api.request("POST", "/1.0/networks", {
            "name": args.network, "type": "bridge",
            "config": {"ipv4.address": "auto", "ipv4.nat": "true" if args.nat else "false"}})
        print(f"Network {args.network} created")
    if not exists(api, f"/1.0/profiles/{DEFAULT_PROFILE}"):
        api.request("POST", "/1.0/profiles", {
            "name": DEFAULT_PROFILE, "description": "Default Corral profile",
            "devices": {"root": {"type": "disk", "path": "/", "pool": DEFAULT_POOL},
                        "eth0": {"type": "nic", "name": "eth0", "network": args.network}}})
        print(f"Profile {DEFAULT_PROFILE} created")


def register(sub: Any) -> None:
    p = command(sub, "init", init)
    p.add_argument("--auto", action="store_true", help="use the defaults, ask nothing")
    p.add_argument("--pool-size", default="10GiB", help="size of the default loop pool")
    p.add_argument("--network", default=DEFAULT_NETWORK, help="name of the default bridge")
    p.add_argument("--nat", action=argparse.BooleanOptionalAction, default=True,
                   help="NAT the bridge's subnet to the host")
