"""What the gateway reads from a request: bad input is a 400 that says what to send."""

from __future__ import annotations

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from services.gateway.request import (
    all_projects,
    json_object,
    project_of,
    read_json,
    recursion_of,
)
from shared.errors import BadRequest


def with_body(body: bytes) -> web.Request:
    class Protocol:  # what a StreamReader asks of the connection it reads
        _reading_paused = False

        def pause_reading(self) -> None: ...

        def resume_reading(self, resume_parser: bool = True) -> None: ...

    payload = streams.StreamReader(Protocol(), 2 ** 16, loop=None)  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request("POST", "/1.0/profiles", payload=payload)


def test_project_defaults_and_all_projects() -> None:
    assert project_of(make_mocked_request("GET", "/1.0/instances")) == "default"
    assert project_of(make_mocked_request("GET", "/1.0/instances?project=")) == "default"
    assert project_of(make_mocked_request("GET", "/1.0/instances?project=p1")) == "p1"
    assert all_projects(make_mocked_request("GET", "/1.0/instances?all-projects=true"))
    assert not all_projects(make_mocked_request("GET", "/1.0/instances?all-projects=1"))


def test_recursion() -> None:
    assert recursion_of(make_mocked_request("GET", "/1.0/instances")) == 0
    assert recursion_of(make_mocked_request("GET", "/1.0/instances?recursion=2")) == 2
    with pytest.raises(BadRequest, match="Invalid recursion value 'deep'"):
        recursion_of(make_mocked_request("GET", "/1.0/instances?recursion=deep"))


async def test_json_bodies() -> None:
    assert await read_json(with_body(b"")) == {}
    assert await json_object(with_body(b'{"name": "p"}')) == {"name": "p"}
    with pytest.raises(BadRequest, match="Invalid JSON in request body"):
        await read_json(with_body(b"{nope"))
    with pytest.raises(BadRequest, match="expected a JSON object"):
        await json_object(with_body(b"[1, 2]"))
