"""The corral CLI's parser: the command table agrees with the modules, lazy building parses
as the whole tree does, and no command drags heavy imports into every run."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from services.cli import commands
from services.cli.main import build_parser, command_word

HEAVY = ("rich", "yaml", "asyncio", "aiohttp", "typer", "httpx", "http.client", "pydantic",
         "email.parser", "nats", "shared.image")


def top_level_names(parser: argparse.ArgumentParser) -> list[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_each_module_registers_the_commands_the_table_gives_it() -> None:
    for module in commands.modules():
        name = module.__name__.rsplit(".", 1)[1]
        parser = argparse.ArgumentParser()
        module.register(parser.add_subparsers())
        wanted = [c for c, (m, _) in commands.COMMANDS.items() if m == name]
        assert top_level_names(parser) == wanted, name


@pytest.mark.parametrize("argv,word", [
    (["list"], "list"), (["--socket", "/x", "image", "list"], "image"),
    (["--socket=/x", "exec", "c1"], "exec"), (["--help"], None), ([], None),
    (["--", "list"], None),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


@pytest.mark.parametrize("argv", [
    ["--socket", "/s", "list", "-f", "json"],
    ["exec", "c1", "--env", "A=1", "--", "sh", "-c", "echo -n hi"],
    ["init", "--auto", "--no-nat", "--network", "br9"],
    ["config", "device", "add", "c1", "eth1", "nic", "network=br0"],
    ["file", "push", "-p", "--mode", "0600", "src", "c1/root/"],
    ["launch", "busybox", "c2", "-p", "default", "-p", "extra", "-c", "limits.cpu=1", "--vm"],
    ["stop", "c1", "c2", "--force", "--timeout", "5"],
    ["image", "build", "busybox", "--alias", "a", "--alias", "b"],
])
def test_lazy_parser_parses_as_the_whole_tree(argv: list[str]) -> None:
    lazy = vars(build_parser(argv).parse_args(argv))
    whole = vars(build_parser(None).parse_args(argv))
    assert lazy == whole


def test_exec_keeps_the_command_after_the_double_dash() -> None:
    args = build_parser(["exec"]).parse_args(["exec", "c1", "--", "sh", "-c", "ls -l"])
    assert args.command == ["sh", "-c", "ls -l"] and args.name == "c1"


@pytest.mark.parametrize("word", ["--help", *commands.COMMANDS])
def test_building_a_command_imports_nothing_heavy(word: str) -> None:
    """rich, PyYAML, asyncio, aiohttp... are imported by a command when it runs, never to
    parse: that is what keeps `corral --help` and `corral list` fast (bench/cli.py)."""
    code = ("import sys; from services.cli.main import build_parser; "
            f"build_parser([{word!r}]); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"building `corral {word}` imports {out}"
