"""``POST /1.0/images/<fp>/refresh`` (``lxc image refresh``): image.refresh.

Rows of the gateway's route table, before IMAGES' rows.
"""

from __future__ import annotations

from ..routing import Route

ROUTES: list[Route] = []
