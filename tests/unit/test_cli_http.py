"""The CLI's HTTP/1.1 framing: what it sends and how it reads each kind of reply."""

from __future__ import annotations

import io
import socket

import pytest

from services.cli.client import ProtocolError, read_response, send_request


def sent(method: str, content: bytes | list[bytes] | None, headers: dict | None = None
         ) -> bytes:
    a, b = socket.socketpair()
    with a, b:
        send_request(a, method, "/1.0/x?y=1", headers or {}, content)
        a.shutdown(socket.SHUT_WR)
        return b.makefile("rb").read()


def test_request_with_a_body_has_its_length() -> None:
    raw = sent("POST", b'{"a":1}', {"Content-Type": "application/json"})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /1.0/x?y=1 HTTP/1.1"
    assert b"Content-Length: 7" in lines and b"Connection: close" in lines
    assert b"Content-Type: application/json" in lines and body == b'{"a":1}'


def test_put_without_a_body_says_zero_and_get_says_nothing() -> None:
    assert b"Content-Length: 0" in sent("PUT", None)
    assert b"Content-Length" not in sent("GET", None)


def test_an_iterable_body_is_sent_chunked() -> None:
    raw = sent("POST", iter([b"hello ", b"", b"world"]))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head.split(b"\r\n")
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


def reply(raw: bytes, method: str = "GET"):
    return read_response(io.BytesIO(raw), method)


def test_reply_with_content_length_and_any_case_headers() -> None:
    r = reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"abc\"\r\n"
              b"Content-Length: 11\r\n\r\n{\"a\": true}trailing junk")
    assert r.status_code == 200 and r.reason_phrase == "OK"
    assert r.json() == {"a": True}
    assert r.headers.get("etag") == '"abc"' and r.headers.get("ETAG") == '"abc"'
    assert r.headers.get("X-LXD-mode") is None


def test_chunked_reply() -> None:
    r = reply(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert r.status_code == 404 and r.content == b"abcdefg"


def test_reply_to_the_end_of_the_connection_and_to_head() -> None:
    assert reply(b"HTTP/1.1 200 OK\r\n\r\nall of it").content == b"all of it"
    r = reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-LXD-type: file\r\n\r\n", "HEAD")
    assert r.content == b"" and r.headers.get("x-lxd-type") == "file"


def test_repeated_headers_are_joined() -> None:
    r = reply(b"HTTP/1.1 200 OK\r\nVary: a\r\nVary: b\r\nContent-Length: 0\r\n\r\n")
    assert r.headers.get("Vary") == "a, b"


@pytest.mark.parametrize("raw", [b"", b"SSH-2.0-OpenSSH\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"])
def test_what_is_not_an_http_reply_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        reply(raw)
