"""Waiting for an operation that downloads (a pull): a progress bar from LXD's
``download_progress`` metadata ("rootfs: 42% (3.10MB/s)") on a terminal, a plain line each
time it changes otherwise (logs and pipes get readable text, not control codes).

The operation is polled with short ``/wait?timeout=1`` calls, the way ``lxc`` watches
``download_progress`` through events, so no event websocket is needed.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable

from .client import APIError, Client

_PERCENT = re.compile(r"(\d{1,3})%")
FINAL = ("Success", "Failure", "Cancelled")


def percent(text: str) -> int | None:
    m = _PERCENT.search(text or "")
    return min(100, int(m.group(1))) if m else None


def _finish(op: dict[str, Any]) -> dict[str, Any]:
    if op["status"] == "Failure":
        raise APIError(op.get("err") or "operation failed", 400)
    if op["status"] == "Cancelled":
        raise APIError(op.get("err") or "operation cancelled", 401)
    return op


def _poll(c: Client, op_url: str, show: Callable[[str], None]) -> dict[str, Any]:
    op_id = op_url.rsplit("/", 1)[-1]
    while True:
        op = c.get(f"/1.0/operations/{op_id}/wait", timeout=1)
        text = (op.get("metadata") or {}).get("download_progress") or ""
        if text:
            show(text)
        if op["status"] in FINAL:
            return _finish(op)


def wait_download(c: Client, envelope: dict[str, Any], label: str) -> dict[str, Any]:
    """Wait for an async answer, showing its download progress; the final operation."""
    op_url = envelope.get("operation") or ""
    if not op_url:
        return {"metadata": envelope.get("metadata") or {}}
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.fields[text]}"), transient=True) as bar:
            task = bar.add_task(label, total=100, text="")

            def draw(text: str) -> None:
                bar.update(task, completed=percent(text) or 0, text=text)

            return _poll(c, op_url, draw)
    last = [""]

    def line(text: str) -> None:
        if text != last[0]:
            last[0] = text
            print(f"{label}: {text}", file=sys.stderr, flush=True)

    return _poll(c, op_url, line)
