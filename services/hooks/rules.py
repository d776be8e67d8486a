"""Pure rules of hooks: checking a hook, matching an event, signing, rendering a command.

Kept free of I/O so unit tests reach every branch, and so the service, the runner and the
REST layer agree on one reading of a hook.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from shared import subjects
from shared.errors import BadRequest
from shared.messages.hooks import EVENT_TYPES, HookBody

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
VERB_RE = re.compile(r"^([a-z]+)\.([a-z_]+)$")
SIGNATURE_HEADER = "X-Corral-Signature"
EVENT_ID_HEADER = "X-Corral-Event-Id"
HOOK_HEADER = "X-Corral-Hook"
ATTEMPT_HEADER = "X-Corral-Delivery-Attempt"
# Subjects a publish hook may not use: Corral's own, JetStream's, inboxes. A hook that
# wants to act on Corral uses ``run`` (a request checked like any other).
RESERVED_PREFIXES = (f"{subjects.PREFIX}.", "$", "_INBOX")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise BadRequest(f"Invalid hook name {name!r}: use 1-48 lowercase letters, digits "
                         "or '-', starting with a letter or digit")
    return name


def check(body: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The stored form of a hook from a request body (400 naming what is wrong)."""
    try:
        hook = HookBody.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"Invalid hook: {where}: {err['msg']}") from None
    hook.name = check_name(name if name is not None else hook.name)
    if hook.type not in EVENT_TYPES:
        raise BadRequest(f"Invalid hook type {hook.type!r}: use one of "
                         f"{', '.join(EVENT_TYPES)}")
    actions = [a for a in ("webhook", "publish", "run") if getattr(hook, a) is not None]
    if len(actions) != 1:
        raise BadRequest("A hook needs exactly one action: webhook, publish or run "
                         f"(got {', '.join(actions) or 'none'})")
    if hook.webhook:
        url = urlsplit(hook.webhook.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BadRequest(f"Invalid webhook URL {hook.webhook.url!r}: use http:// or "
                             "https:// with a host")
    if hook.publish:
        subject = hook.publish.subject
        if not SUBJECT_RE.match(subject) or subject.startswith(RESERVED_PREFIXES):
            raise BadRequest(f"Invalid publish subject {subject!r}: a literal NATS subject "
                             "(no wildcards) outside corral.*, $* and _INBOX*")
    if hook.run and not VERB_RE.match(hook.run.verb):
        raise BadRequest(f"Invalid run verb {hook.run.verb!r}: use SERVICE.VERB, e.g. "
                         "instance.snapshot_create")
    if hook.run and hook.run.verb.split(".")[0] not in subjects.SERVICES:
        raise BadRequest(f"Invalid run verb {hook.run.verb!r}: no service "
                         f"{hook.run.verb.split('.')[0]!r}")
    if hook.project and subjects.token(hook.project) != hook.project:
        raise BadRequest(f"Invalid project {hook.project!r}")
    for key, pattern in hook.match.items():
        if not key or not pattern:
            raise BadRequest("Invalid match: use KEY=GLOB with both sides non-empty")
    return hook.model_dump(exclude_none=True)


def kind(hook: dict[str, Any]) -> str:
    return next(a for a in ("webhook", "publish", "run") if hook.get(a))


def filter_subject(hook: dict[str, Any]) -> str:
    """The narrowest stream subject holding every event the hook may match.

    A lifecycle action without wildcards names its entity (``instance-started`` ->
    ``instance``, as ``shared.events`` builds the subject), so the consumer skips the rest
    on the server.
    """
    project = subjects.token(hook["project"]) if hook.get("project") else "*"
    action = hook.get("action") or "*"
    entity = ">"
    if hook["type"] == "lifecycle" and not any(c in action for c in "*?[") and "-" in action:
        entity = subjects.token(action.rsplit("-", 1)[0])
    return f"{subjects.PREFIX}.events.{subjects.token(hook['type'])}.{project}.{entity}"


def entity_name(event: dict[str, Any]) -> str:
    """The object an event is about: the last part of ``metadata.source`` (lifecycle) or
    of the operation's first resource."""
    meta = event.get("metadata") or {}
    source = meta.get("source") or ""
    if not source:
        for urls in (meta.get("resources") or {}).values():
            if urls:
                source = urls[0]
                break
    return unquote(urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1]) if source else ""


def field(event: dict[str, Any], key: str) -> Any:
    if key == "name":
        return entity_name(event)
    value: Any = event
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(hook: dict[str, Any], event: dict[str, Any]) -> bool:
    if event.get("type") != hook["type"]:
        return False
    if hook.get("project") and event.get("project", "default") != hook["project"]:
        return False
    meta = event.get("metadata") or {}
    if hook["type"] == "lifecycle":
        if not fnmatch.fnmatchcase(str(meta.get("action", "")), hook.get("action") or "*"):
            return False
        # Never a hook's own failures: a failing hook on lifecycle:* would feed itself.
        if meta.get("source") == f"/1.0/hooks/{hook['name']}":
            return False
    for key, pattern in (hook.get("match") or {}).items():
        value = field(event, key)
        if value is None or not fnmatch.fnmatchcase(str(value), pattern):
            return False
    return True


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of the exact body bytes (GitHub's webhook convention)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, body), header or "")


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): 0.5, 1, 2, 4 ... capped."""
    return min(cap, base * (2 ** (attempt - 1)))


def render(value: Any, facts: dict[str, str]) -> Any:
    """``value`` with ``{name}``-style fields of every string filled from ``facts``
    (unknown fields stay as written, so a JSON body with braces survives)."""
    if isinstance(value, str):
        return re.sub(r"\{([a-z_]+)\}", lambda m: facts.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: render(v, facts) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, facts) for v in value]
    return value


def facts(event: dict[str, Any], event_id: str) -> dict[str, str]:
    meta = event.get("metadata") or {}
    stamp = re.sub(r"[^0-9A-Za-z]", "", str(event.get("timestamp", "")))[:20]
    return {"name": entity_name(event), "project": event.get("project", "default"),
            "event_id": event_id, "action": str(meta.get("action", "")),
            "timestamp": stamp, "source": str(meta.get("source", ""))}


def public(hook: dict[str, Any]) -> dict[str, Any]:
    """A hook as GET shows it: the webhook's secret replaced by whether one is set."""
    out = json.loads(json.dumps(hook))
    if out.get("webhook"):
        out["webhook"]["secret"] = "(set)" if out["webhook"].get("secret") else ""
    return out
