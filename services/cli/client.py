"""A small client of Corral's (LXD's) REST API over the unix socket.

Built on the standard library's ``http.client`` rather than httpx: httpx alone costs about
70 ms of import time, more than the whole budget of ``corral list`` beside Python's start.
One connection per request: connecting to a unix socket costs microseconds, and a fresh
connection never meets a keep-alive the server already closed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode

DEFAULT_TIMEOUT = 60.0


class APIError(Exception):
    """An error envelope from the server, or the server not reachable."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(APIError):
    """A command line that cannot work (exit code 2, as argparse's own usage errors)."""


def from_args(args: Any) -> "Client":
    """The client for a parsed command line (its global ``--socket``)."""
    return Client(getattr(args, "socket", None))


def default_socket() -> Path:
    base = os.environ.get("CORRAL_DIR") or os.environ.get("LXD_DIR")
    return Path(base or (Path.cwd() / "var")) / "unix.socket"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("corral", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Response:
    """What the server answered: status, headers (case-insensitive) and the whole body."""

    def __init__(self, status_code: int, reason: str, headers: http.client.HTTPMessage,
                 content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    def __init__(self, socket_path: Path | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = Path(socket_path) if socket_path else default_socket()
        self.timeout = timeout

    def raw(self, method: str, path: str, params: dict[str, Any] | None = None,
            content: bytes | Iterable[bytes] | None = None,
            headers: dict[str, str] | None = None) -> Response:
        """One HTTP exchange; an iterable ``content`` is sent chunked, as it is read."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = path + ("?" + urlencode(query) if query else "")
        conn = _UnixConnection(str(self.socket), self.timeout)
        try:
            conn.request(method, url, body=content, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, resp.reason, resp.headers, resp.read())
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError,
                BrokenPipeError, http.client.RemoteDisconnected) as exc:
            raise APIError(f"Cannot reach Corral at {self.socket}: is it running? "
                           "(start it with `make up`, or pass --socket)") from exc
        except socket.timeout as exc:
            raise APIError(f"Corral at {self.socket} did not answer in time") from exc
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, **params: Any
                ) -> dict[str, Any]:
        """The decoded envelope; error envelopes raise :class:`APIError`."""
        content = None
        headers = {}
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return envelope(self.raw(method, path, params=params, content=content,
                                 headers=headers), path)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)["metadata"]

    def wait(self, operation: str, timeout: float = -1) -> dict[str, Any]:
        """Wait for an operation URL or id; raise when it failed."""
        op_id = operation.rsplit("/", 1)[-1]
        op = self.get(f"/1.0/operations/{op_id}/wait", timeout=timeout)
        if op["status"] == "Failure":
            raise APIError(op.get("err") or "operation failed", 400)
        if op["status"] == "Cancelled":
            raise APIError(op.get("err") or "operation cancelled", 401)
        return op


def envelope(resp: Response, what: str = "") -> dict[str, Any]:
    """LXD's envelope of ``resp``; an error envelope (or no JSON) raises :class:`APIError`."""
    try:
        env = resp.json()
    except ValueError as exc:
        raise APIError(f"Unexpected answer from {what or 'Corral'}: HTTP {resp.status_code}",
                       resp.status_code) from exc
    if not isinstance(env, dict):
        raise APIError(f"Unexpected answer from {what or 'Corral'}: not an LXD envelope",
                       resp.status_code)
    if env.get("type") == "error" or resp.status_code >= 400:
        raise APIError(env.get("error") or resp.reason_phrase or "unknown error",
                       env.get("error_code") or resp.status_code)
    return env
