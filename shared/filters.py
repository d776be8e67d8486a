"""LXD's ``filter=`` query language (``api_filtering``) over API objects (instances,
images, ...): the stock client sends ``filter=`` on lists once the server claims
``api_filtering``.

Grammar (as LXD's ``lxd/filter``): ``[not] FIELD eq|ne VALUE`` clauses joined by ``and`` /
``or`` (``and`` binds tighter), values optionally quoted. A field is a dotted path into the
object; map keys may themselves contain dots (``config.image.os``, ``expanded_config.x``),
so the longest key present wins. Comparisons ignore case, as ``status eq running`` shows.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable

from .errors import BadRequest

Clause = tuple[bool, str, str, str]  # (negated, field, op, value)


def parse(text: str) -> list[list[Clause]]:
    """Disjunctive normal form: a list of AND-groups, any of which may match."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise BadRequest(f"Invalid filter {text!r}: {exc}") from None
    groups: list[list[Clause]] = [[]]
    i = 0
    while i < len(tokens):
        neg = False
        while i < len(tokens) and tokens[i].lower() == "not":
            neg, i = not neg, i + 1
        if i + 3 > len(tokens):
            raise BadRequest(f"Invalid filter {text!r}: expected FIELD eq|ne VALUE")
        field, op, value = tokens[i], tokens[i + 1].lower(), tokens[i + 2]
        if op not in ("eq", "ne"):
            raise BadRequest(f"Invalid filter operator {op!r}: use eq or ne")
        groups[-1].append((neg, field, op, value))
        i += 3
        if i < len(tokens):
            joiner = tokens[i].lower()
            if joiner == "or":
                groups.append([])
            elif joiner != "and":
                raise BadRequest(f"Invalid filter {text!r}: expected 'and' or 'or', "
                                 f"got {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise BadRequest(f"Invalid filter {text!r}: it ends with {joiner!r}")
    return groups


def lookup(obj: Any, field: str) -> Any:
    parts = field.split(".")
    cur = obj
    while parts:
        if not isinstance(cur, dict):
            return None
        for n in range(len(parts), 0, -1):  # longest key first: config keys have dots
            k = ".".join(parts[:n])
            if k in cur:
                cur, parts = cur[k], parts[n:]
                break
        else:
            return None
    return cur


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def matches(obj: dict[str, Any], groups: list[list[Clause]]) -> bool:
    def clause(c: Clause) -> bool:
        neg, field, op, value = c
        eq = _text(lookup(obj, field)).lower() == value.lower()
        res = eq if op == "eq" else not eq
        return not res if neg else res

    return any(all(clause(c) for c in g) for g in groups)


def compile_filter(expr: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate for ``expr`` (everything matches an empty filter)."""
    if not expr or not expr.strip():
        return lambda _obj: True
    groups = parse(expr)
    return lambda obj: matches(obj, groups)
