"""``corral config show|get|set|unset|edit`` and ``config device add|remove|list``.

Changes are read-modify-write with the ETag (If-Match), so a concurrent change is an
error instead of being silently overwritten.
"""


import json
import os
import subprocess
import tempfile
from typing import Any, List, Optional

import typer
import yaml

WRITABLE = ("architecture", "config", "devices", "ephemeral", "profiles", "description")


def read(path: str) -> tuple[dict[str, Any], str]:
    """The object and its ETag."""
    from ..cli import client

    c = client()
    resp = c.raw("GET", path)
    env = resp.json()
    if env.get("type") == "error":
        from ..client import APIError
        raise APIError(env.get("error") or "unknown error", env.get("error_code", 0))
    return env["metadata"], resp.headers.get("ETag", "")


def write(path: str, obj: dict[str, Any], etag: str, keys: tuple[str, ...] = WRITABLE
          ) -> None:
    """PUT the writable fields back; waits when the server answers with an operation."""
    from ..cli import client
    from ..client import APIError
    from .instances import wait_op

    body = {k: obj[k] for k in keys if k in obj}
    resp = client().raw("PUT", path, content=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", "If-Match": etag})
    env = resp.json()
    if env.get("type") == "error":
        raise APIError(env.get("error") or "unknown error", env.get("error_code", 0))
    wait_op(env, "Updating")


def edit_yaml(doc: dict[str, Any]) -> dict[str, Any]:
    """Open $EDITOR on ``doc`` as YAML; return what was saved."""
    from ..client import APIError

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w+", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
        tmp = fh.name
    try:
        if subprocess.call(f'{editor} "{tmp}"', shell=True) != 0:
            raise APIError(f"Editor {editor!r} failed; nothing was changed")
        with open(tmp) as fh:
            new = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise APIError(f"Invalid YAML, nothing was changed: {exc}") from None
    finally:
        os.unlink(tmp)
    if not isinstance(new, dict):
        raise APIError("Invalid YAML, nothing was changed: expected a mapping")
    return new


def register(app: typer.Typer) -> None:
    from ..client import APIError
    from .instances import ipath, parse_pairs

    cfg = typer.Typer(help="Show and change instance configuration.", no_args_is_help=True)
    dev = typer.Typer(help="Manage instance devices.", no_args_is_help=True)
    cfg.add_typer(dev, name="device")
    app.add_typer(cfg, name="config")

    @cfg.command("show")
    def show(name: str, expanded: bool = typer.Option(False, "--expanded", "-e")) -> None:
        """Show an instance's configuration as YAML."""
        obj, _ = read(ipath(name))
        out = {k: obj[k] for k in WRITABLE if k in obj}
        if expanded:
            out["config"], out["devices"] = obj["expanded_config"], obj["expanded_devices"]
        print(yaml.safe_dump(out, sort_keys=False), end="")

    @cfg.command("get")
    def get(name: str, key: str) -> None:
        """Print one config value (empty when unset)."""
        obj, _ = read(ipath(name))
        print(obj["config"].get(key, ""))

    @cfg.command("set")
    def set_(name: str, pairs: List[str] = typer.Argument(..., help="KEY=VALUE or KEY VALUE")
             ) -> None:
        """Set config keys (limits apply live on a running instance)."""
        if len(pairs) == 2 and "=" not in pairs[0]:
            values = {pairs[0]: pairs[1]}
        else:
            values = parse_pairs(pairs)
        obj, etag = read(ipath(name))
        obj["config"].update(values)
        write(ipath(name), obj, etag)

    @cfg.command("unset")
    def unset(name: str, key: str) -> None:
        """Remove a config key."""
        obj, etag = read(ipath(name))
        if key not in obj["config"]:
            raise APIError(f"Can't unset key {key!r}, it's not currently set")
        del obj["config"][key]
        write(ipath(name), obj, etag)

    @cfg.command("edit")
    def edit(name: str) -> None:
        """Edit config, devices, profiles and description in $EDITOR."""
        obj, etag = read(ipath(name))
        new = edit_yaml({k: obj[k] for k in WRITABLE if k in obj})
        write(ipath(name), {**obj, **new}, etag)

    @dev.command("add")
    def dev_add(name: str, device: str, type_: str = typer.Argument(..., metavar="TYPE"),
                pairs: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE")) -> None:
        """Add a device, e.g. `config device add c1 eth1 nic network=br0`."""
        obj, etag = read(ipath(name))
        if device in obj["devices"]:
            raise APIError(f"The device already exists: {device}")
        obj["devices"][device] = {"type": type_, **parse_pairs(pairs)}
        write(ipath(name), obj, etag)
        print(f"Device {device} added to {name}")

    @dev.command("remove")
    def dev_remove(name: str, device: str) -> None:
        """Remove a device the instance itself defines (not one from a profile)."""
        obj, etag = read(ipath(name))
        if device not in obj["devices"]:
            raise APIError(f"The device doesn't exist: {device}")
        del obj["devices"][device]
        write(ipath(name), obj, etag)
        print(f"Device {device} removed from {name}")

    @dev.command("list")
    def dev_list(name: str) -> None:
        """List the instance's own devices."""
        obj, _ = read(ipath(name))
        for d in sorted(obj["devices"]):
            print(d)
