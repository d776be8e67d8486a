"""JSON request bodies decoded within bounds every service can carry.

Why bounds here, once: what a client sends goes on the bus as msgpack, into pydantic
models and into services' validation code. Some JSON that Python decodes happily breaks
those later, as a 500 far from the cause: integers of 2^64 and more (msgpack stops at
64 bits, LXD's Go types at int64), NaN and Infinity (not JSON at all, and not comparable),
strings with lone UTF-16 surrogates (no UTF-8 for them, so msgpack cannot encode them),
and nesting deep enough to exhaust Python's recursion. Each is a 400 naming the field.

``MAX_DEPTH``: LXD's objects nest at most 4 or 5 levels (``devices.eth0.<key>``, an
image's ``source`` or ``aliases[0].name``); 64 leaves room for anything a client could
mean and stays far below the ~1000 frames where Python's decoder gives up.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.errors import BadRequest

MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class _Huge(str):
    """An integer literal too long for 64 bits, kept as text until its field is known
    (Python would refuse to convert one of more than 4300 digits anyway)."""


def _parse_int(text: str) -> int | _Huge:
    return _Huge(text) if len(text) > 20 else int(text)


def _no_constant(name: str) -> Any:
    raise BadRequest(f"Invalid JSON in request body: {name} is not a number JSON allows")


def decode(raw: bytes) -> Any:
    """``raw`` as JSON within the bounds above; empty is ``{}`` (LXD's clients send none
    for bodiless POSTs). Raises :class:`BadRequest` saying what and where."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"Invalid JSON in request body: nested deeper than {MAX_DEPTH} "
                         "levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Invalid JSON in request body: {exc}") from None
    check(value)
    return value


def _where(path: str) -> str:
    return path or "the request body"


def check(value: Any) -> None:
    """Walk ``value`` (iteratively: no recursion to exhaust) and refuse what cannot travel."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"Invalid JSON in request body: nested deeper than "
                                 f"{MAX_DEPTH} levels at {_where(path)}")
            for key, sub in item.items():
                here = f"{path}.{key}" if path else key
                _check_text(key, here, "key")
                stack.append((sub, here, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"Invalid JSON in request body: nested deeper than "
                                 f"{MAX_DEPTH} levels at {_where(path)}")
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, _Huge) or (
                isinstance(item, int) and not isinstance(item, bool)
                and not INT64_MIN <= item <= INT64_MAX):
            shown = str(item) if len(str(item)) <= 30 else f"{str(item)[:20]}..."
            raise BadRequest(f"Invalid value for {_where(path)}: {shown} is out of range "
                             "(integers must fit in 64 bits)")
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadRequest(f"Invalid value for {_where(path)}: the number is too large")
        elif isinstance(item, str):
            _check_text(item, path, "value")


def _check_text(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"Invalid {what} for {_where(path)}: it holds an unpaired UTF-16 "
                         "surrogate escape (\\ud800-\\udfff), which is no character"
                         ) from None
