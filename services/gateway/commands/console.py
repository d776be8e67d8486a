"""``corral console NAME --show-log``: an instance's console log."""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command("console")
    def console(name: str = typer.Argument(..., help="The instance"),
                show_log: bool = typer.Option(False, "--show-log",
                                              help="Print the console log and exit"),
                clear: bool = typer.Option(False, "--clear", help="Empty the console log"),
                project: str = typer.Option("default", "--project")) -> None:
        """Show (or clear) the console log of an instance."""
        from ..cli import client
        from ..client import APIError
        from .file import _check

        path = f"/1.0/instances/{name}/console"
        if clear:
            _check(client().raw("DELETE", path, params={"project": project}))
            return
        if not show_log:
            raise APIError("Interactive consoles are not supported yet: use --show-log")
        resp = client().raw("GET", path, params={"project": project})
        _check(resp)
        sys.stdout.buffer.write(resp.content)
