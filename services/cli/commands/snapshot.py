"""``corral snapshot / restore`` (issue 10; being filled in)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from ..client import UsageError
from ..parsing import command


def _todo(args: Namespace) -> None:
    raise UsageError("This command is not implemented yet")


def register(sub: Any) -> None:
    command(sub, "snapshot", _todo)
    command(sub, "restore", _todo)
