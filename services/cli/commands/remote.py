"""``corral remote``: the image servers and Corral/LXD servers this client knows
(``remote add NAME URL --protocol simplestreams|lxd|oci``), used as ``NAME:`` in
``corral launch NAME:ALIAS``, ``corral image list NAME:`` and ``corral image copy``."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from ..client import UsageError
from ..parsing import command, group


def _todo(args: Namespace) -> None:
    raise UsageError("corral remote is not implemented yet")


def register(sub: Any) -> None:
    remotes = group(sub, "remote")
    command(remotes, "list", _todo, "List the remotes.")
