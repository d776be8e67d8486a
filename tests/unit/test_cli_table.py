"""The CLI's fast table is byte for byte what rich prints, and steps aside where it is not."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from services.cli.table import console_width, render

CASES = [
    (["NAME", "STATE", "IPV4", "TYPE", "SNAPSHOTS"], []),
    (["NAME", "STATE", "IPV4", "TYPE", "SNAPSHOTS"],
     [["c1", "RUNNING", "10.0.3.7 (eth0)\n10.0.4.2 (eth1)", "CONTAINER", "0"],
      ["a-much-longer-name", "STOPPED", "", "VIRTUAL-MACHINE", "12"]]),
    (["NAME", "USED BY"], [["default", "3"], ["", ""]]),
    (["A"], [["x"], ["multi\nline\ncell"]]),
]


def rich_prints(headers: list[str], rows: list[list[str]], width: int, terminal: bool) -> str:
    buf = io.StringIO()
    table = Table(*headers, show_lines=False)
    for row in rows:
        table.add_row(*row)
    Console(file=buf, width=width, force_terminal=terminal, color_system="standard" if
            terminal else None, _environ={}).print(table)
    return buf.getvalue()


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("headers,rows", CASES)
def test_same_bytes_as_rich(headers: list[str], rows: list[list[str]], terminal: bool) -> None:
    ours = render(headers, rows, 120, terminal, environ={})
    assert ours is not None
    assert ours == rich_prints(headers, rows, 120, terminal)


@pytest.mark.parametrize("cell", ["[bold]x[/bold]", "12:30:00", "café", "tab\there",
                                  " padded"])
def test_cells_rich_would_interpret_are_left_to_rich(cell: str) -> None:
    assert render(["A"], [[cell]], 120, False, environ={}) is None


def test_a_table_wider_than_the_console_is_left_to_rich() -> None:
    rows = [["x" * 30, "y" * 30]]
    assert render(["A", "B"], rows, 80, False, environ={}) is not None
    assert render(["A", "B"], rows, 60, False, environ={}) is None
    # The limit is rich's: exactly as wide as the console still draws unwrapped.
    exact = len(rich_prints(["A", "B"], rows, 200, False).splitlines()[0])
    assert render(["A", "B"], rows, exact, False, environ={}) == rich_prints(
        ["A", "B"], rows, exact, False)
    assert render(["A", "B"], rows, exact - 1, False, environ={}) is None


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"FORCE_COLOR": "1"},
                                 {"TTY_COMPATIBLE": "1"}])
def test_variables_that_change_rich_output_leave_it_to_rich(env: dict[str, str]) -> None:
    assert render(["A"], [["x"]], 80, False, environ=env) is None


def test_dumb_terminal_is_left_to_rich() -> None:
    assert render(["A"], [["x"]], 80, True, environ={"TERM": "dumb"}) is None
    assert render(["A"], [["x"]], 80, False, environ={"TERM": "dumb"}) is not None


def test_console_width_is_richs() -> None:
    for env in ({}, {"COLUMNS": "132"}, {"COLUMNS": "abc"}):
        assert console_width(env) == Console(_environ=env).width
