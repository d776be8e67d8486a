"""LXD's ``?filter=`` for image lists: ``type eq container and properties.os eq busybox``.

Why here and small: the stock client sends ``filter=`` on every ``lxc image list`` once the
server has ``api_filtering``, mostly empty, sometimes ``key eq value`` pairs built from the
user's ``key=value`` arguments. Supported: ``eq``/``ne``, ``and``/``or``, ``not``, quoted
values; fields are dotted paths into the image object.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable

from shared.errors import BadRequest

Predicate = Callable[[dict[str, Any]], bool]


def _value(obj: Any, path: str) -> str | None:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return None if obj is None else str(obj)


def compile_filter(expr: str | None) -> Predicate:
    """A predicate for ``expr``; ``and`` binds tighter than ``or`` as in LXD."""
    if not expr or not expr.strip():
        return lambda _obj: True
    try:
        words = shlex.split(expr)
    except ValueError as exc:
        raise BadRequest(f"Invalid filter {expr!r}: {exc}") from None
    alternatives: list[list[tuple[bool, str, str, str]]] = [[]]
    i = 0
    while i < len(words):
        negate = words[i].lower() == "not"
        if negate:
            i += 1
        if i + 3 > len(words):
            raise BadRequest(f"Invalid filter {expr!r}: expected 'field eq|ne value'")
        field, op, val = words[i], words[i + 1].lower(), words[i + 2]
        if op not in ("eq", "ne"):
            raise BadRequest(f"Invalid filter operator {op!r}: use eq or ne")
        alternatives[-1].append((negate, field, op, val))
        i += 3
        if i < len(words):
            joiner = words[i].lower()
            if joiner == "or":
                alternatives.append([])
            elif joiner != "and":
                raise BadRequest(f"Invalid filter {expr!r}: expected 'and' or 'or', "
                                 f"not {words[i]!r}")
            i += 1
            if i >= len(words):
                raise BadRequest(f"Invalid filter {expr!r}: ends with {joiner!r}")

    def test(obj: dict[str, Any]) -> bool:
        for clauses in alternatives:
            ok = True
            for negate, field, op, val in clauses:
                hit = (_value(obj, field) == val) == (op == "eq")
                if hit == negate:
                    ok = False
                    break
            if ok:
                return True
        return False

    return test
