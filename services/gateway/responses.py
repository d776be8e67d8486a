"""LXD's response envelope, exactly: sync, async (202 + Location) and error."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


def sync(metadata: Any, etag: str | None = None, status: int = 200) -> web.Response:
    headers = {"ETag": f'"{etag}"'} if etag else None
    return _json({"type": "sync", "status": "Success", "status_code": 200, "operation": "",
                  "error_code": 0, "error": "", "metadata": metadata}, status, headers)


def async_(operation: dict[str, Any]) -> web.Response:
    url = f"/1.0/operations/{operation['id']}"
    return _json({"type": "async", "status": "Operation created", "status_code": 100,
                  "operation": url, "error_code": 0, "error": "", "metadata": operation},
                 202, {"Location": url})


def error(code: int, message: str) -> web.Response:
    return _json({"type": "error", "status": "", "status_code": 0, "operation": "",
                  "error_code": code, "error": message, "metadata": None}, code)
