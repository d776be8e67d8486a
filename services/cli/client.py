"""A small client of Corral's (LXD's) REST API over the unix socket.

HTTP/1.1 spoken directly on the socket rather than through httpx or ``http.client``:
httpx costs about 70 ms of import time and ``http.client`` (through the ``email``
package it parses headers with) about 40 ms, against a budget of 150 ms for the whole of
``corral list``. What is spoken here is the small part of HTTP/1.1 our own gateway
(aiohttp) needs: one request per connection (``Connection: close``), a body with
``Content-Length`` or sent chunked as it is read, and a reply framed by
``Content-Length``, chunked, or the end of the connection.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, BinaryIO, Iterable
from urllib.parse import quote, urlencode

DEFAULT_TIMEOUT = 60.0
_METHODS_WITH_BODY = ("POST", "PUT", "PATCH")


class APIError(Exception):
    """An error envelope from the server, or the server not reachable."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(APIError):
    """A command line that cannot work (exit code 2, as argparse's own usage errors)."""


class ProtocolError(Exception):
    """The other end did not speak HTTP/1.1 as expected."""


def from_args(args: Any) -> "Client":
    """The client for a parsed command line (its global ``--socket``)."""
    return Client(getattr(args, "socket", None))


def default_socket() -> Path:
    base = os.environ.get("CORRAL_DIR") or os.environ.get("LXD_DIR")
    return Path(base or (Path.cwd() / "var")) / "unix.socket"


class Headers(dict):  # type: ignore[type-arg]
    """Reply headers by lower-case name; lookups take any case."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class Response:
    """What the server answered: status, headers (case-insensitive) and the whole body."""

    def __init__(self, status_code: int, reason: str, headers: Headers,
                 content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


def send_request(sock: socket.socket, method: str, target: str, headers: dict[str, str],
                 content: bytes | Iterable[bytes] | None) -> None:
    lines = [f"{method} {target} HTTP/1.1", "Host: corral", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    chunked = content is not None and not isinstance(content, (bytes, bytearray))
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif content is not None or method in _METHODS_WITH_BODY:
        lines.append(f"Content-Length: {len(content or b'')}")  # type: ignore[arg-type]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if not chunked:
        sock.sendall(head + bytes(content or b""))  # type: ignore[arg-type]
        return
    sock.sendall(head)
    for chunk in content:  # type: ignore[union-attr]
        if chunk:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    sock.sendall(b"0\r\n\r\n")


def _read_line(f: BinaryIO) -> bytes:
    line = f.readline(65537)
    if not line:
        raise ProtocolError("connection closed before the reply ended")
    return line.rstrip(b"\r\n")


def read_response(f: BinaryIO, method: str) -> Response:
    """One HTTP/1.1 reply from ``f``, its body whole."""
    status = _read_line(f).decode("latin-1")
    version, _, rest = status.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP reply: {status[:80]!r}")
    headers = Headers()
    while line := _read_line(f):
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    status_code = int(code)
    if method == "HEAD" or status_code in (204, 304) or 100 <= status_code < 200:
        body = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int(_read_line(f).split(b";")[0], 16):
            parts.append(f.read(size))
            f.read(2)
        while _read_line(f):  # trailers
            pass
        body = b"".join(parts)
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = f.read()
    return Response(status_code, reason, headers, body)


class Client:
    def __init__(self, socket_path: Path | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = Path(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        # The project every request works in (``--project``, see main.take_project).
        self.project = os.environ.get("CORRAL_PROJECT") or None

    def raw(self, method: str, path: str, params: dict[str, Any] | None = None,
            content: bytes | Iterable[bytes] | None = None,
            headers: dict[str, str] | None = None) -> Response:
        """One HTTP exchange; an iterable ``content`` is sent chunked, as it is read."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if self.project and "project" not in query and not path.startswith("/1.0/projects"):
            query["project"] = self.project
        target = quote(path, safe="/%:@!$&'()*+,;=-._~") + (
            "?" + urlencode(query) if query else "")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket))
            try:
                send_request(sock, method, target, headers or {}, content)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered before reading it all (an error): read that
            with sock.makefile("rb") as f:
                return read_response(f, method)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError,
                BrokenPipeError, ProtocolError) as exc:
            raise APIError(f"Cannot reach Corral at {self.socket}: is it running? "
                           "(start it with `make up`, or pass --socket)") from exc
        except socket.timeout as exc:
            raise APIError(f"Corral at {self.socket} did not answer in time") from exc
        finally:
            sock.close()

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
