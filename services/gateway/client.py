"""A small client of Corral's (LXD's) REST API over the unix socket, for the CLI and tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx


class APIError(Exception):
    """An error envelope from the server, or the server not reachable."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def default_socket() -> Path:
    base = os.environ.get("CORRAL_DIR") or os.environ.get("LXD_DIR")
    return Path(base or (Path.cwd() / "var")) / "unix.socket"


class Client:
    def __init__(self, socket: Path | str | None = None, timeout: float = 60.0) -> None:
        self.socket = Path(socket) if socket else default_socket()
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)),
                                  base_url="http://corral", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise APIError(f"Cannot reach Corral at {self.socket}: is it running? "
                           "(start it with `make up`, or pass --socket)") from exc
        except httpx.TimeoutException as exc:
            raise APIError(f"Corral at {self.socket} did not answer in time") from exc

    def request(self, method: str, path: str, body: Any = None, **params: Any
                ) -> dict[str, Any]:
        """The decoded envelope; error envelopes raise :class:`APIError`."""
        kwargs: dict[str, Any] = {"params": {k: v for k, v in params.items() if v is not None}}
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        resp = self.raw(method, path, **kwargs)
        try:
            envelope = resp.json()
        except ValueError as exc:
            raise APIError(f"Unexpected answer from {path}: HTTP {resp.status_code}",
                           resp.status_code) from exc
        if envelope.get("type") == "error":
            raise APIError(envelope.get("error") or "unknown error",
                           envelope.get("error_code", resp.status_code))
        return envelope

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
