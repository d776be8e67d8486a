"""``corral hook add|list|show|edit|delete|log|test``: automation hooks (``/1.0/hooks``).

``corral hook add NAME --on TYPE:ACTION [--project P] [--match KEY=GLOB]...
(--webhook URL [--secret S] | --publish SUBJECT | --run VERB [JSON])``
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, UsageError, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command, group

KEYS = ("description", "type", "action", "project", "match", "webhook", "publish", "run",
        "retries")


def hpath(name: str) -> str:
    return f"/1.0/hooks/{quote(name, safe='')}"


def _target(h: dict[str, Any]) -> str:
    if h.get("webhook"):
        return "webhook " + h["webhook"]["url"]
    if h.get("publish"):
        return "publish " + h["publish"]["subject"]
    if h.get("run"):
        return "run " + h["run"]["verb"]
    return ""


def body_of(args: Namespace) -> dict[str, Any]:
    """The REST body of ``corral hook add``'s arguments (pure: unit-tested)."""
    type_, _, action = args.on.partition(":")
    if not type_:
        raise UsageError("--on needs TYPE[:ACTION], e.g. lifecycle:instance-started")
    match: dict[str, str] = {}
    for item in args.match or []:
        key, sep, glob = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--match {item!r}: use KEY=GLOB, e.g. name=web*")
        match[key] = glob
    body: dict[str, Any] = {"name": args.name, "type": type_, "action": action or "*",
                            "match": match, "description": args.description or ""}
    if args.project:
        body["project"] = args.project
    if args.retries is not None:
        body["retries"] = args.retries
    chosen = [x for x in (args.webhook, args.publish, args.run_verb) if x]
    if len(chosen) != 1:
        raise UsageError("Give exactly one of --webhook URL, --publish SUBJECT, --run VERB")
    if args.secret and not args.webhook:
        raise UsageError("--secret goes with --webhook")
    if args.webhook:
        body["webhook"] = {"url": args.webhook, "secret": args.secret or ""}
        if args.timeout is not None:
            body["webhook"]["timeout"] = args.timeout
    elif args.publish:
        body["publish"] = {"subject": args.publish}
    else:
        verb, *rest = args.run_verb
        run_body: Any = {}
        if rest:
            try:
                run_body = json.loads(" ".join(rest))
            except ValueError as exc:
                raise UsageError(f"--run {verb}: the JSON body does not parse: {exc}") from None
            if not isinstance(run_body, dict):
                raise UsageError(f"--run {verb}: the JSON body must be an object")
        body["run"] = {"verb": verb, "body": run_body}
    return body


def add(args: Namespace) -> None:
    from_args(args).request("POST", "/1.0/hooks", body_of(args))
    print(f"Hook {args.name} created")


def list_(args: Namespace) -> None:
    items = from_args(args).get("/1.0/hooks", recursion=1) or []
    rows = [{"name": h["name"], "on": f"{h['type']}:{h.get('action', '*')}",
             "project": h.get("project") or "*", "action": _target(h),
             "match": ",".join(f"{k}={v}" for k, v in (h.get("match") or {}).items())}
            for h in items]
    emit(rows, ["name", "on", "project", "match", "action"], args.fmt, raw=items)


def show(args: Namespace) -> None:
    print_yaml(from_args(args).get(hpath(args.name)))


def edit(args: Namespace) -> None:
    c = from_args(args)
    obj = c.get(hpath(args.name))
    doc = {k: obj[k] for k in KEYS if k in obj}
    if not sys.stdin.isatty():
        import yaml

        new = yaml.safe_load(sys.stdin.read()) or {}
        if not isinstance(new, dict):
            raise APIError("Invalid YAML on stdin: expected a mapping")
    else:
        from .config import edit_yaml

        new = edit_yaml(doc)
    c.request("PUT", hpath(args.name), {k: v for k, v in new.items() if k in KEYS})


def delete(args: Namespace) -> None:
    from_args(args).request("DELETE", hpath(args.name))
    print(f"Hook {args.name} deleted")


def log(args: Namespace) -> None:
    entries = from_args(args).get(hpath(args.name) + "/log") or []
    rows = [{"time": e["time"], "event_id": e["event_id"], "action": e.get("action", ""),
             "status": e["status"], "attempts": e["attempts"],
             "detail": e.get("error") or e.get("result", "")} for e in entries]
    emit(rows, ["time", "event_id", "action", "status", "attempts", "detail"], args.fmt,
         raw=entries)


def test(args: Namespace) -> None:
    body: dict[str, Any] = {}
    if args.event:
        try:
            body["event"] = json.loads(args.event)
        except ValueError as exc:
            raise UsageError(f"--event: the JSON does not parse: {exc}") from None
    entry = from_args(args).request("POST", hpath(args.name) + "/test", body)["metadata"]
    print_yaml(entry)
    if entry.get("status") != "delivered":
        raise APIError(f"Hook {args.name}: the test delivery failed: {entry.get('error')}")


def register(sub: Any) -> None:
    hooks = group(sub, "hook")
    p = command(hooks, "add", add, "Add a hook: when an event matches, POST a webhook, "
                "publish on NATS or run a Corral verb.")
    p.add_argument("name")
    p.add_argument("--on", required=True, metavar="TYPE:ACTION",
                   help="event type (lifecycle, operation, logging) and action glob, "
                   "e.g. lifecycle:instance-started")
    p.add_argument("--project", help="only this project's events")
    p.add_argument("--match", action="append", metavar="KEY=GLOB",
                   help="a glob on an event field (dotted, e.g. metadata.context.reason; "
                   "'name' is the object's name); repeatable")
    p.add_argument("--webhook", metavar="URL", help="POST the event's JSON to URL")
    p.add_argument("--secret", help="sign webhook bodies (X-Corral-Signature: sha256=...)")
    p.add_argument("--timeout", type=float, help="webhook timeout in seconds (default 5)")
    p.add_argument("--publish", metavar="SUBJECT", help="publish the event on SUBJECT")
    p.add_argument("--run", nargs="+", metavar=("VERB", "JSON"), dest="run_verb",
                   help="run SERVICE.VERB on the event's object with the JSON body "
                   "({name}, {project}, {event_id}, {timestamp} are filled in)")
    p.add_argument("--retries", type=int, help="attempts after the first (default 8)")
    p.add_argument("--description", default="")
    p = command(hooks, "list", list_, "List hooks.")
    add_format(p)
    p = command(hooks, "show", show, "Show a hook (its secret is never shown).")
    p.add_argument("name")
    p = command(hooks, "edit", edit, "Edit a hook as YAML ($EDITOR, or YAML on stdin).")
    p.add_argument("name")
    p = command(hooks, "delete", delete, "Delete a hook (its consumer and credential too).")
    p.add_argument("name")
    p = command(hooks, "log", log, "Show a hook's recent deliveries.")
    p.add_argument("name")
    add_format(p)
    p = command(hooks, "test", test, "Deliver one made-up event to a hook now, once.")
    p.add_argument("name")
    p.add_argument("--event", help="the event as JSON (default: one the hook matches)")
