"""``corral init --auto``: the defaults a fresh host needs, like ``lxd init --auto``.

Creates what is absent, touches nothing that exists (so ``make up`` can run it every
time): the ``default`` storage pool (btrfs on a loop file when the kernel has btrfs, else
dir), the ``corralbr0`` bridge with a free private subnet, DHCP/DNS and NAT, and the
``default`` profile with a root disk on that pool and ``eth0`` on that bridge.
"""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_POOL = "default"
DEFAULT_NETWORK = "corralbr0"
DEFAULT_PROFILE = "default"


def has_btrfs() -> bool:
    try:
        return any(line.split()[-1] == "btrfs"
                   for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def exists(api, path: str) -> bool:
    from ..client import APIError

    try:
        api.get(path)
        return True
    except APIError as exc:
        if exc.code == 404:
            return False
        raise


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(auto: bool = typer.Option(False, "--auto", help="use the defaults, ask nothing"),
             pool_size: str = typer.Option("10GiB", help="size of the default loop pool"),
             network: str = typer.Option(DEFAULT_NETWORK, help="name of the default bridge"),
             nat: bool = typer.Option(True, help="NAT the bridge's subnet to the host")
             ) -> None:
        """Create the default storage pool, bridge network and profile (idempotent)."""
        from ..cli import client

        if not auto:
            raise typer.BadParameter("only `corral init --auto` exists for now")
        api = client()
        if not exists(api, f"/1.0/storage-pools/{DEFAULT_POOL}"):
            body = ({"name": DEFAULT_POOL, "driver": "btrfs", "config": {"size": pool_size}}
                    if has_btrfs() else {"name": DEFAULT_POOL, "driver": "dir"})
            api.request("POST", "/1.0/storage-pools", body)
            typer.echo(f"Storage pool {DEFAULT_POOL} created ({body['driver']})")
        if not exists(api, f"/1.0/networks/{network}"):
            api.request("POST", "/1.0/networks", {
                "name": network, "type": "bridge",
                "config": {"ipv4.address": "auto", "ipv4.nat": "true" if nat else "false"}})
            typer.echo(f"Network {network} created")
        if not exists(api, f"/1.0/profiles/{DEFAULT_PROFILE}"):
            api.request("POST", "/1.0/profiles", {
                "name": DEFAULT_PROFILE, "description": "Default Corral profile",
                "devices": {"root": {"type": "disk", "path": "/", "pool": DEFAULT_POOL},
                            "eth0": {"type": "nic", "name": "eth0", "network": network}}})
            typer.echo(f"Profile {DEFAULT_PROFILE} created")
