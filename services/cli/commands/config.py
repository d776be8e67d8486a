"""``corral config show|get|set|unset|edit`` and ``config device add|remove|list``.

Changes are read-modify-write with the ETag (If-Match), so a concurrent change is an
error instead of being silently overwritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from argparse import Namespace
from typing import Any

from ..client import APIError, Client, envelope, from_args
from ..output import dump_yaml, print_yaml
from ..parsing import command, group
from . import trust
from .instances import ipath, parse_pairs, wait_op

WRITABLE = ("architecture", "config", "devices", "ephemeral", "profiles", "description")


def read(c: Client, path: str) -> tuple[dict[str, Any], str]:
    """The object and its ETag."""
    resp = c.raw("GET", path)
    return envelope(resp, path)["metadata"], resp.headers.get("ETag", "")


def write(c: Client, path: str, obj: dict[str, Any], etag: str,
          keys: tuple[str, ...] = WRITABLE) -> None:
    """PUT the writable fields back; waits when the server answers with an operation."""
    body = {k: obj[k] for k in keys if k in obj}
    resp = c.raw("PUT", path, content=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", "If-Match": etag})
    wait_op(c, envelope(resp, path), "Updating")


def edit_yaml(doc: dict[str, Any]) -> dict[str, Any]:
    """Open $EDITOR on ``doc`` as YAML; return what was saved."""
    import yaml

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w+", suffix=".yaml", delete=False) as fh:
        fh.write(dump_yaml(doc))
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


def show(args: Namespace) -> None:
    obj, _ = read(from_args(args), ipath(args.name))
    out = {k: obj[k] for k in WRITABLE if k in obj}
    if args.expanded:
        out["config"], out["devices"] = obj["expanded_config"], obj["expanded_devices"]
    print_yaml(out)


def get(args: Namespace) -> None:
    if args.key is None and trust.is_server_key(args.name):  # a server key (no dot in
        return trust.server_get(from_args(args), args.name)  # an instance's name)
    if args.key is None:
        raise APIError("Which key? corral config get INSTANCE KEY, or a server key")
    obj, _ = read(from_args(args), ipath(args.name))
    print(obj["config"].get(args.key, ""))


def set_(args: Namespace) -> None:
    pairs = args.pairs
    if trust.is_server_key(args.name):
        pairs = [args.name, *pairs]
        values = {pairs[0]: pairs[1]} if len(pairs) == 2 and "=" not in pairs[0] \
            else parse_pairs(pairs)
        return trust.server_set(from_args(args), values)
    if len(pairs) == 2 and "=" not in pairs[0]:
        values = {pairs[0]: pairs[1]}
    else:
        values = parse_pairs(pairs)
    c = from_args(args)
    obj, etag = read(c, ipath(args.name))
    obj["config"].update(values)
    write(c, ipath(args.name), obj, etag)


def unset(args: Namespace) -> None:
    c = from_args(args)
    if args.key is None and trust.is_server_key(args.name):
        return trust.server_unset(c, args.name)
    if args.key is None:
        raise APIError("Which key? corral config unset INSTANCE KEY, or a server key")
    obj, etag = read(c, ipath(args.name))
    if args.key not in obj["config"]:
        raise APIError(f"Can't unset key {args.key!r}, it's not currently set")
    del obj["config"][args.key]
    write(c, ipath(args.name), obj, etag)


def edit(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ipath(args.name))
    new = edit_yaml({k: obj[k] for k in WRITABLE if k in obj})
    write(c, ipath(args.name), {**obj, **new}, etag)


def dev_add(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ipath(args.name))
    if args.device in obj["devices"]:
        raise APIError(f"The device already exists: {args.device}")
    obj["devices"][args.device] = {"type": args.type, **parse_pairs(args.pairs)}
    write(c, ipath(args.name), obj, etag)
    print(f"Device {args.device} added to {args.name}")


def dev_remove(args: Namespace) -> None:
    c = from_args(args)
    obj, etag = read(c, ipath(args.name))
    if args.device not in obj["devices"]:
        raise APIError(f"The device doesn't exist: {args.device}")
    del obj["devices"][args.device]
    write(c, ipath(args.name), obj, etag)
    print(f"Device {args.device} removed from {args.name}")


def dev_list(args: Namespace) -> None:
    obj, _ = read(from_args(args), ipath(args.name))
    for d in sorted(obj["devices"]):
        print(d)


def register(sub: Any) -> None:
    cfg = group(sub, "config")
    p = command(cfg, "show", show, "Show an instance's configuration as YAML.")
    p.add_argument("name")
    p.add_argument("--expanded", "-e", action="store_true")
    p = command(cfg, "get", get, "Print one config value (empty when unset); a server key "
                "alone (core.https_address) reads the server's.")
    p.add_argument("name")
    p.add_argument("key", nargs="?")
    p = command(cfg, "set", set_, "Set config keys (limits apply live on a running instance); "
                "`config set core.https_address :8443` sets the server's.")
    p.add_argument("name")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="KEY=VALUE or KEY VALUE")
    p = command(cfg, "unset", unset, "Remove a config key (of the server when no instance "
                "is named).")
    p.add_argument("name")
    p.add_argument("key", nargs="?")
    p = command(cfg, "edit", edit, "Edit config, devices, profiles and description in $EDITOR.")
    p.add_argument("name")

    trust.register(cfg)

    dev = group(cfg, "device", "Manage instance devices.")
    p = command(dev, "add", dev_add, "Add a device, e.g. `config device add c1 eth1 nic "
                "network=br0`.")
    p.add_argument("name")
    p.add_argument("device")
    p.add_argument("type", metavar="TYPE")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    p = command(dev, "remove", dev_remove, "Remove a device the instance itself defines (not "
                "one from a profile).")
    p.add_argument("name")
    p.add_argument("device")
    p = command(dev, "list", dev_list, "List the instance's own devices.")
    p.add_argument("name")
