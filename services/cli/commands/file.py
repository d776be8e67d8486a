"""``corral file push|pull|delete``: files in an instance, byte-exact, any size."""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..client import APIError, Client, Response, UsageError, from_args
from ..parsing import command, group


def _target(spec: str) -> tuple[str, str]:
    """``NAME/path/in/instance`` -> (name, "/path/in/instance")."""
    name, sep, path = spec.partition("/")
    if not name or not sep:
        raise UsageError(f"{spec!r}: expected NAME/PATH, e.g. c1/etc/hosts")
    return name, "/" + path


def _files_url(name: str) -> str:
    return f"/1.0/instances/{name}/files"


def check(resp: Response) -> None:
    """Raise the server's error for a raw (non-envelope) answer."""
    if resp.status_code >= 400:
        try:
            env = resp.json()
            msg, code = env.get("error") or resp.reason_phrase, env.get("error_code", 0)
        except ValueError:
            msg, code = f"HTTP {resp.status_code}", resp.status_code
        raise APIError(msg, code)


def push(args: Namespace) -> None:
    src: Path = args.src
    name, path = _target(args.target)
    data = sys.stdin.buffer.read() if str(src) == "-" else src.read_bytes()
    if args.target.endswith("/"):
        path = posixpath.join(path, src.name)
    mode = args.mode
    if mode is None and str(src) != "-":
        mode = f"{stat.S_IMODE(src.stat().st_mode):04o}"
    c = from_args(args)
    if args.parents:
        _mkdirs(c, name, posixpath.dirname(path), args.project)
    headers = {"X-LXD-type": "file", "X-LXD-write": "overwrite"}
    if mode is not None:
        headers["X-LXD-mode"] = f"{int(mode, 8):04o}"
    if args.uid >= 0:
        headers["X-LXD-uid"] = str(args.uid)
    if args.gid >= 0:
        headers["X-LXD-gid"] = str(args.gid)
    given = [k for k, v in (("uid", args.uid >= 0), ("gid", args.gid >= 0),
                            ("mode", args.mode is not None)) if v]
    if given:  # also on an existing file, as LXD's X-LXD-modify-perm says
        headers["X-LXD-modify-perm"] = ",".join(given)
    check(c.raw("POST", _files_url(name), params={"path": path, "project": args.project},
                content=data, headers=headers))


def pull(args: Namespace) -> None:
    name, path = _target(args.source)
    resp = from_args(args).raw("GET", _files_url(name),
                               params={"path": path, "project": args.project})
    check(resp)
    if resp.headers.get("X-LXD-type") == "directory":
        raise UsageError(f"{path} is a directory (recursive pull is not supported)")
    dest: Path = args.dest
    if str(dest) == "-":
        sys.stdout.buffer.write(resp.content)
        return
    if dest.is_dir():
        dest = dest / posixpath.basename(path)
    dest.write_bytes(resp.content)
    mode = resp.headers.get("X-LXD-mode")
    if mode:
        os.chmod(dest, int(mode, 8))


def delete(args: Namespace) -> None:
    name, path = _target(args.target)
    check(from_args(args).raw("DELETE", _files_url(name),
                              params={"path": path, "project": args.project}))


def _mkdirs(c: Client, name: str, path: str, project: str) -> None:
    """Create each missing directory of ``path`` (existing ones are left untouched)."""
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        check(c.raw("POST", _files_url(name),
                    params={"path": "/" + "/".join(parts[:i]), "project": project},
                    headers={"X-LXD-type": "directory", "X-LXD-mode": "0755"}))


def register(sub: Any) -> None:
    files = group(sub, "file")
    p = command(files, "push", push, "Copy a local file into an instance.")
    p.add_argument("src", type=Path, help="local file ('-' for stdin)")
    p.add_argument("target", help="NAME/PATH; a trailing / means a dir")
    p.add_argument("--uid", type=int, default=-1)
    p.add_argument("--gid", type=int, default=-1)
    p.add_argument("--mode", default=None, help="octal, e.g. 0644")
    p.add_argument("-p", "--create-dirs", dest="parents", action="store_true",
                   help="create missing parent directories")
    p.add_argument("--project", default=None)  # None: --project anywhere, see main
    p = command(files, "pull", pull, "Copy a file out of an instance.")
    p.add_argument("source", help="NAME/PATH")
    p.add_argument("dest", type=Path, help="local file or directory ('-': stdout)")
    p.add_argument("--project", default=None)  # None: --project anywhere, see main
    p = command(files, "delete", delete, "Delete a file, symlink or empty directory in an "
                "instance.")
    p.add_argument("target", help="NAME/PATH")
    p.add_argument("--project", default=None)  # None: --project anywhere, see main
