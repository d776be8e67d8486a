"""Helpers the command modules use to declare their commands on argparse."""

from __future__ import annotations

import argparse
from typing import Any, Callable

Run = Callable[[argparse.Namespace], "int | None"]


def group(sub: Any, name: str, help: str | None = None) -> Any:
    """A command with subcommands (``corral image ...``); alone it prints its help.

    A top-level command's ``help`` defaults to its line in ``commands.COMMANDS``.
    """
    help = help or _summary(name)
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(run=lambda _args: parser.print_help())
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def command(sub: Any, name: str, run: Run, help: str | None = None,
            description: str | None = None) -> argparse.ArgumentParser:
    """One command: ``help`` is its line in the listing (for a top-level command, by
    default its line in ``commands.COMMANDS``), ``description`` its own ``--help``."""
    help = help or _summary(name)
    parser = sub.add_parser(name, help=help, description=description or help)
    parser.set_defaults(run=run)
    return parser


def _summary(name: str) -> str:
    from .commands import summary

    return summary(name)
