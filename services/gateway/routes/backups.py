"""Routes of issue 10's backups work (rows of the gateway's route table; see __init__.py)."""

from __future__ import annotations

from ..routing import Route

ROUTES: list[Route] = []
