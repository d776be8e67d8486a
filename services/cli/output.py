"""How the CLI prints: tables (rich's), JSON, YAML, CSV.

rich and PyYAML are imported only when a command prints that way, and simple tables are
drawn as rich draws them without importing it (``table.py``): together they cost about as
much as the rest of ``corral list`` (see ``services.cli.main``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

FORMATS = ("table", "json", "yaml", "csv")


def add_format(parser: Any, default: str = "table") -> None:
    """The ``--format/-f`` option of the listing commands."""
    parser.add_argument("--format", "-f", dest="fmt", choices=FORMATS, default=default,
                        help=f"output format (default: {default})")


def dump_yaml(doc: Any) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False)


def print_yaml(doc: Any) -> None:
    sys.stdout.write(dump_yaml(doc))


def emit(rows: list[dict[str, Any]], columns: list[str], fmt: str, raw: Any = None) -> None:
    """Print a listing as a table, or as JSON/YAML (the full objects) or CSV (the columns)."""
    if fmt == "json":
        print(json.dumps(raw if raw is not None else rows, indent=2))
    elif fmt == "yaml":
        print_yaml(raw if raw is not None else rows)
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
    else:
        from .table import console_width, render

        headers = [c.upper() for c in columns]
        cells = [[str(row.get(c, "")) for c in columns] for row in rows]
        text = render(headers, cells, console_width(), sys.stdout.isatty())
        if text is not None:
            sys.stdout.write(text)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers, show_lines=False)
        for line in cells:
            table.add_row(*line)
        Console().print(table)
