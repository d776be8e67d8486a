"""``corral``: the command line, a client of the gateway like any other (typer + rich)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from .client import APIError, Client

app = typer.Typer(help="Corral: system containers and virtual machines.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
operation_app = typer.Typer(help="List, show, wait for and cancel operations.",
                            no_args_is_help=True)
app.add_typer(operation_app, name="operation")

out = Console()


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"
    csv = "csv"


class State:
    socket: Optional[Path] = None


def client() -> Client:
    return Client(State.socket)


@app.callback()
def _global(socket: Optional[Path] = typer.Option(
        None, "--socket", help="The gateway's unix socket (default $CORRAL_DIR/unix.socket)")
) -> None:
    State.socket = socket


def emit(rows: list[dict[str, Any]], columns: list[str], fmt: Format,
         raw: Any = None) -> None:
    """Print a listing as a table, or as JSON/YAML (the full objects) or CSV (the columns)."""
    if fmt is Format.json:
        print(json.dumps(raw if raw is not None else rows, indent=2))
    elif fmt is Format.yaml:
        print(yaml.safe_dump(raw if raw is not None else rows, sort_keys=False), end="")
    elif fmt is Format.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
        print(buf.getvalue(), end="")
    else:
        table = Table(*[c.upper() for c in columns], show_lines=False)
        for row in rows:
            table.add_row(*[str(row.get(c, "")) for c in columns])
        out.print(table)


# -- server ------------------------------------------------------------------------------

@app.command()
def info() -> None:
    """Show the server: API, drivers, storage, kernel."""
    meta = client().get("/1.0")
    print(yaml.safe_dump(meta, sort_keys=False), end="")


@app.command("list")
def list_(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
    """List instances."""
    items = client().get("/1.0/instances", recursion=2)
    rows = []
    for inst in items:
        state = inst.get("state") or {}
        ipv4 = []
        for nic, data in (state.get("network") or {}).items():
            if nic == "lo":
                continue
            ipv4 += [f"{a['address']} ({nic})" for a in data.get("addresses", [])
                     if a.get("family") == "inet"]
        rows.append({"name": inst["name"], "state": inst.get("status", "").upper(),
                     "ipv4": "\n".join(ipv4), "type": inst.get("type", "container").upper(),
                     "snapshots": len(inst.get("snapshots") or [])})
    emit(rows, ["name", "state", "ipv4", "type", "snapshots"], fmt, raw=items)


# -- operations --------------------------------------------------------------------------

def _op_row(op: dict[str, Any]) -> dict[str, Any]:
    return {"id": op["id"], "class": op["class"], "description": op["description"],
            "status": op["status"], "cancelable": "YES" if op["may_cancel"] else "NO",
            "created": op["created_at"]}


@operation_app.command("list")
def operation_list(fmt: Format = typer.Option(Format.table, "--format", "-f")) -> None:
    """List operations (finished ones stay for the retention time, 10 minutes by default)."""
    grouped = client().get("/1.0/operations", recursion=1)
    ops = sorted((op for ops in grouped.values() for op in ops), key=lambda o: o["created_at"])
    emit([_op_row(o) for o in ops],
         ["id", "class", "description", "status", "cancelable", "created"], fmt, raw=ops)


@operation_app.command("show")
def operation_show(op_id: str) -> None:
    """Show one operation."""
    print(yaml.safe_dump(client().get(f"/1.0/operations/{op_id}"), sort_keys=False), end="")


@operation_app.command("wait")
def operation_wait(op_id: str, timeout: float = typer.Option(-1, help="seconds, -1: forever")
                   ) -> None:
    """Wait for an operation to finish; exits non-zero when it failed."""
    op = client().get(f"/1.0/operations/{op_id}/wait", timeout=timeout)
    print(yaml.safe_dump(op, sort_keys=False), end="")
    if op["status"] in ("Failure", "Cancelled"):
        raise typer.Exit(1)


@operation_app.command("delete")
def operation_delete(op_id: str) -> None:
    """Cancel a running operation."""
    client().request("DELETE", f"/1.0/operations/{op_id}")


# -- events ------------------------------------------------------------------------------

@app.command()
def monitor(types: str = typer.Option("", "--type", help="lifecycle,operation,logging"),
            fmt: Format = typer.Option(Format.yaml, "--format", "-f"),
            count: int = typer.Option(0, "--count", help="stop after N events (0: never)"),
            all_projects: bool = typer.Option(False, "--all-projects")) -> None:
    """Print events as they happen."""
    asyncio.run(_monitor(client().socket, types, fmt, count, all_projects))


async def _monitor(socket: Path, types: str, fmt: Format, count: int, all_projects: bool
                   ) -> None:
    import aiohttp

    params = {}
    if types:
        params["type"] = types
    if all_projects:
        params["all-projects"] = "true"
    seen = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))
                                         ) as session:
            async with session.ws_connect("http://corral/1.0/events", params=params,
                                          heartbeat=30) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(msg.data)
                    if fmt is Format.json:
                        print(json.dumps(event), flush=True)
                    else:
                        print(yaml.safe_dump(event, sort_keys=False), flush=True)
                    seen += 1
                    if count and seen >= count:
                        return
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise APIError(f"Cannot reach Corral at {socket}: is it running? (make up)") from exc


def _load_commands() -> None:
    """Resource command groups live in services/gateway/commands/, one module each."""
    from . import commands

    for module in commands.modules():
        module.register(app)


_load_commands()


def main() -> None:
    try:
        app()
    except APIError as exc:
        # Plain write: one line, never wrapped to the terminal width.
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
