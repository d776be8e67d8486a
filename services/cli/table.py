"""rich's default table, drawn without importing rich when it is simple enough.

Importing rich costs about 50 ms, a third of ``corral list``'s budget, to draw what is
usually a few short ASCII cells. :func:`render` draws exactly what
``rich.console.Console().print(rich.table.Table(*headers))`` prints (the same box, padding,
bold headers on a terminal, the same width rule), but only for tables where that is plain
arithmetic: ASCII cells without rich markup or emoji codes (``[`` and ``:``), nothing
forcing rich's terminal detection, and a table narrower than the console (rich would wrap
it). For anything else it returns None and the caller uses rich itself.
tests/unit/test_cli_table.py compares the two byte for byte.
"""

from __future__ import annotations

import os
from typing import Mapping

# rich.box.HEAVY_HEAD: heavy top and header, light body.
_TOP = ("┏", "━", "┳", "┓")
_HEAD = "┃"
_HEAD_RULE = ("┡", "━", "╇", "┩")
_BODY = "│"
_BOTTOM = ("└", "─", "┴", "┘")
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
# Variables that change how rich decides it writes to a terminal, or in what style.
_RICH_ENV = ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "TTY_INTERACTIVE")


def console_width(environ: Mapping[str, str] = os.environ) -> int:
    """rich's console width: the first of stdin, stdout, stderr that is a terminal, unless
    ``COLUMNS`` says otherwise; 80 when neither tells."""
    width = 0
    for fd in (0, 1, 2):
        try:
            width = os.get_terminal_size(fd).columns
            break
        except (ValueError, OSError):
            pass
    columns = environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        width = int(columns)
    return width or 80


def _plain(cell: str) -> bool:
    return all(line.isascii() and line.isprintable() and line == line.strip()
               and "[" not in line and ":" not in line for line in cell.split("\n"))


def render(headers: list[str], rows: list[list[str]], width: int, terminal: bool,
           environ: Mapping[str, str] = os.environ) -> str | None:
    """The table as rich prints it on a console ``width`` wide (``terminal``: with bold
    headers), or None when only rich knows how."""
    if any(k in environ for k in _RICH_ENV):
        return None
    if terminal and environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return None
    if not all(_plain(c) for c in headers) or not all(_plain(c) for r in rows for c in r):
        return None
    cells = [[c.split("\n") for c in row] for row in rows]
    widths = [max([len(h)] + [len(line) for row in cells for line in row[i]])
              for i, h in enumerate(headers)]
    if sum(widths) + 3 * len(widths) + 1 > width:
        return None

    def rule(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def head_cell(text: str, w: int) -> str:
        if not terminal:
            return f" {text.ljust(w)} "
        return f"{_BOLD} {_RESET}{_BOLD}{text.ljust(w)}{_RESET}{_BOLD} {_RESET}"

    heads = (head_cell(h, w) for h, w in zip(headers, widths, strict=True))
    out = [rule(*_TOP), _HEAD + _HEAD.join(heads) + _HEAD, rule(*_HEAD_RULE)]
    for row in cells:
        for n in range(max((len(lines) for lines in row), default=1)):
            out.append(_BODY + _BODY.join(
                f" {(lines[n] if n < len(lines) else '').ljust(w)} "
                for lines, w in zip(row, widths, strict=True)) + _BODY)
    out.append(rule(*_BOTTOM))
    return "\n".join(out) + "\n"
