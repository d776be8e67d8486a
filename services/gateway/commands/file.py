"""``corral file push|pull|delete``: files in an instance, byte-exact, any size."""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from pathlib import Path
from typing import Optional

import typer


def _target(spec: str) -> tuple[str, str]:
    """``NAME/path/in/instance`` -> (name, "/path/in/instance")."""
    name, sep, path = spec.partition("/")
    if not name or not sep:
        raise typer.BadParameter(f"{spec!r}: expected NAME/PATH, e.g. c1/etc/hosts")
    return name, "/" + path


def _files_url(name: str) -> str:
    return f"/1.0/instances/{name}/files"


def _check(resp) -> None:
    from ..client import APIError

    if resp.status_code >= 400:
        try:
            env = resp.json()
            msg, code = env.get("error") or resp.reason_phrase, env.get("error_code", 0)
        except ValueError:
            msg, code = f"HTTP {resp.status_code}", resp.status_code
        raise APIError(msg, code)


def register(app: typer.Typer) -> None:
    file_app = typer.Typer(help="Push, pull and delete files in instances.",
                           no_args_is_help=True)
    app.add_typer(file_app, name="file")

    @file_app.command("push")
    def push(src: Path = typer.Argument(..., help="Local file ('-' for stdin)"),
             target: str = typer.Argument(..., help="NAME/PATH; a trailing / means a dir"),
             uid: int = typer.Option(-1, "--uid"), gid: int = typer.Option(-1, "--gid"),
             mode: Optional[str] = typer.Option(None, "--mode", help="octal, e.g. 0644"),
             parents: bool = typer.Option(False, "-p", "--create-dirs",
                                          help="Create missing parent directories"),
             project: str = typer.Option("default", "--project")) -> None:
        """Copy a local file into an instance."""
        from ..cli import client

        name, path = _target(target)
        data = sys.stdin.buffer.read() if str(src) == "-" else src.read_bytes()
        if target.endswith("/"):
            path = posixpath.join(path, src.name)
        if mode is None and str(src) != "-":
            mode = f"{stat.S_IMODE(src.stat().st_mode):04o}"
        c = client()
        if parents:
            _mkdirs(c, name, posixpath.dirname(path), project)
        headers = {"X-LXD-type": "file", "X-LXD-write": "overwrite"}
        if mode is not None:
            headers["X-LXD-mode"] = f"{int(mode, 8):04o}"
        if uid >= 0:
            headers["X-LXD-uid"] = str(uid)
        if gid >= 0:
            headers["X-LXD-gid"] = str(gid)
        _check(c.raw("POST", _files_url(name), params={"path": path, "project": project},
                      content=data, headers=headers))

    @file_app.command("pull")
    def pull(source: str = typer.Argument(..., help="NAME/PATH"),
             dest: Path = typer.Argument(..., help="Local file or directory ('-': stdout)"),
             project: str = typer.Option("default", "--project")) -> None:
        """Copy a file out of an instance."""
        from ..cli import client

        name, path = _target(source)
        resp = client().raw("GET", _files_url(name), params={"path": path, "project": project})
        _check(resp)
        if resp.headers.get("X-LXD-type") == "directory":
            raise typer.BadParameter(f"{path} is a directory (recursive pull is not supported)")
        if str(dest) == "-":
            sys.stdout.buffer.write(resp.content)
            return
        if dest.is_dir():
            dest = dest / posixpath.basename(path)
        dest.write_bytes(resp.content)
        mode = resp.headers.get("X-LXD-mode")
        if mode:
            os.chmod(dest, int(mode, 8))

    @file_app.command("delete")
    def delete(target: str = typer.Argument(..., help="NAME/PATH"),
               project: str = typer.Option("default", "--project")) -> None:
        """Delete a file, symlink or empty directory in an instance."""
        from ..cli import client

        name, path = _target(target)
        _check(client().raw("DELETE", _files_url(name),
                            params={"path": path, "project": project}))


def _mkdirs(c, name: str, path: str, project: str) -> None:
    """Create each missing directory of ``path`` (existing ones are left untouched)."""
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        _check(c.raw("POST", _files_url(name),
                     params={"path": "/" + "/".join(parts[:i]), "project": project},
                     headers={"X-LXD-type": "directory", "X-LXD-mode": "0755"}))
