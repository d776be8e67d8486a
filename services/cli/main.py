"""``corral``: parse the command line with argparse and run one command.

Why argparse and not typer (which this CLI used before): the CLI must answer
``corral --help`` within 100 ms and ``corral list`` within 150 ms on a 2-core host where
Python itself starts in about 23 ms. Measured here (median of 15 runs of ``python -c``):
``import typer`` 88 ms, ``import httpx`` 91 ms, ``import rich.console, rich.table`` 82 ms,
``import argparse`` 30 ms, ``import http.client`` 64 ms, against 23 ms for ``pass``.
typer alone would take most of the ``--help`` budget before building a tree of 60
commands and rendering its help through rich, and a typer tree built lazily still pays
typer's import. argparse is the standard library's (nothing more to keep up to date).

The tree is built lazily too: building all 60 parsers costs about 30 ms (argparse looks up
translations for every message it registers), so ``corral --help`` lists the commands from
the table in ``commands/__init__.py`` and ``corral list`` builds only the parsers of the
module that serves ``list``. Each command imports what it needs when it runs: rich for
tables, PyYAML for YAML, asyncio and aiohttp for websockets (exec, console, monitor).
``bench/cli.py`` measures the result against those goals.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .parsing import Run


def command_word(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not a global option), if any."""
    skip = False
    for tok in argv:
        if skip:
            skip = False
        elif tok == "--socket":
            skip = True
        elif tok == "--":
            return None
        elif not tok.startswith("-"):
            return tok
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the full parsers of the module serving its command, and
    a one-line entry for every other command (all of them with ``argv=None``)."""
    from . import commands

    parser = argparse.ArgumentParser(
        prog="corral", description="Corral: system containers and virtual machines.")
    parser.add_argument("--socket", type=Path, default=None,
                        help="the gateway's unix socket (default $CORRAL_DIR/unix.socket)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    word = command_word(argv) if argv is not None else None
    if argv is None:
        for module in commands.modules():
            module.register(sub)
    elif word in commands.COMMANDS:
        commands.module_of(word).register(sub)
    else:  # `corral`, `corral --help`, or a typo: list the commands, build none
        for name, (_module, summary) in commands.COMMANDS.items():
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def take_project(argv: list[str]) -> list[str]:
    """``argv`` without its ``--project NAME`` / ``--project=NAME`` (anywhere before
    ``--``, as lxc takes it), which goes to ``CORRAL_PROJECT``: the client then adds
    ``?project=`` to every request of the command. ``corral bus`` keeps its own
    ``--project`` (the project a NATS credential is limited to)."""
    words = [t for i, t in enumerate(argv) if not t.startswith("-")
             and (i == 0 or argv[i - 1] not in ("--project", "--socket"))]
    if words[:1] == ["bus"]:
        return argv
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        tok = argv[i]
        if tok == "--":
            return out + argv[i:]
        if tok == "--project" and i + 1 < len(argv):
            os.environ["CORRAL_PROJECT"] = argv[i + 1]
            next(it, None)
        elif tok.startswith("--project="):
            os.environ["CORRAL_PROJECT"] = tok.split("=", 1)[1]
        else:
            out.append(tok)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = take_project(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run: Run | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0
    from .client import APIError, UsageError

    try:
        return int(run(args) or 0)
    except UsageError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        return 2
    except APIError as exc:
        # Plain write: one line, never wrapped to the terminal width.
        sys.stderr.write(f"Error: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `corral list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
