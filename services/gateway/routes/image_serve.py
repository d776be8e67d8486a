"""Serving images to other servers: ``POST /1.0/images/<fp>/secret`` and the
simplestreams tree of the public images (``/streams/v1/index.json``,
``/streams/v1/images.json`` and the files they name), on the HTTPS listener.

Rows of the gateway's route table, before IMAGES' rows.
"""

from __future__ import annotations

from ..routing import Route

ROUTES: list[Route] = []
