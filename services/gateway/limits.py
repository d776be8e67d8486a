"""How big a request body may be, refused before it is read (413).

Why in front of every route: a JSON body is read whole into memory, decoded, copied into
a bus message; a client (or a loop gone wrong) sending gigabytes would take the gateway's
memory with it. ``max_body_size`` (default 64 MiB, ``CORRAL_MAX_BODY_SIZE``) is far above
any LXD object and below what hurts. A declared ``Content-Length`` above it is refused
without reading a byte; a chunked body is read only up to the limit (aiohttp's
``client_max_size``, set to the same number, stops ``request.read()`` there).

Routes that stream their body to disk (image uploads, file push) are marked with
:func:`streams_body` and exempt: their size is bounded by the disk they land on.
"""

from __future__ import annotations

import os
from typing import Awaitable, Callable, TypeVar

from aiohttp import web

from . import responses

DEFAULT_MAX_BODY = 64 * 1024 ** 2
ENV = "CORRAL_MAX_BODY_SIZE"

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def max_body_size() -> int:
    """Bytes a non-streaming request body may have: ``$CORRAL_MAX_BODY_SIZE`` or 64 MiB."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a number of bytes") from None
    if value < 1024:
        raise ValueError(f"{ENV}={raw!r}: below 1024 bytes no LXD request fits")
    return value


def streams_body(handler: H) -> H:
    """Mark a route handler that streams its body to disk, so no body limit applies."""
    handler.streams_body = True  # type: ignore[attr-defined]
    return handler


def exempt(request: web.Request) -> bool:
    """Whether the route ``request`` matched streams its body (see :func:`streams_body`)
    and this body is not JSON: ``POST /1.0/instances`` and ``/1.0/images`` stream a tarball
    but read a JSON body whole, which the limit must still guard."""
    handler = getattr(request.match_info, "handler", None)
    route_handler = getattr(handler, "route_handler", handler)
    return (getattr(route_handler, "streams_body", False) is True
            and request.content_type != "application/json")


def too_large(limit: int) -> web.Response:
    return responses.error(413, f"Request body too large: the limit is {limit} bytes "
                                f"({ENV} on the gateway)")


def body_limit(limit: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: 413 for a declared ``Content-Length`` above ``limit``, unread; and
    LXD's error envelope for aiohttp's own 413 when a chunked body reaches it (also on a
    streaming route that reads a JSON body, as ``POST /1.0/images`` may)."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if (request.content_length is not None and request.content_length > limit
                and not exempt(request)):
            return too_large(limit)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return too_large(limit)

    return middleware
