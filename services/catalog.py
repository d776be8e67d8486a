"""The NATS subject catalogue, generated from the services' request models.

Why here (``services/catalog.py``, beside ``services/all.py``) and not in ``shared/``: the
catalogue reads the ``@endpoint`` registrations of every service class, so it must import
them all, which only a module outside every service may do (tests/unit/test_imports.py);
it never connects to NATS. The roles come from shared/auth.py's permission tables
themselves (a subject is listed for a role when nats-server would let that role publish
it), so the document cannot promise what the server refuses.

``corral bus schema`` prints it (JSON, or ``--markdown``); ``docs/nats-api.md`` is that
markdown and ``shared/client/api.py`` the Python client's methods (``make nats-api``
writes both), and tests/test_nats_api.py fails when either is stale.
"""

from __future__ import annotations

import importlib
import inspect
import json
import keyword
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared import auth, subjects
from shared.events import ID_HEADER
from shared.models import Reply
from shared.service import Service

ROOT = Path(__file__).resolve().parent
# Packages under services/ that are not bus services with verbs of their own.
NOT_SERVICES = ("cli", "gateway")
EXAMPLE_NODE = "node1"
EXAMPLE_PROJECT = "default"


def service_classes() -> list[type[Service]]:
    """Every ``services/<name>/service.py``'s Service subclass, by name."""
    found: dict[str, type[Service]] = {}
    for path in sorted(ROOT.glob("*/service.py")):
        if path.parent.name in NOT_SERVICES:
            continue
        module = importlib.import_module(f"services.{path.parent.name}.service")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Service) and obj is not Service \
                    and obj.__module__ == module.__name__ and obj.name:
                found[obj.name] = obj
    return [found[n] for n in sorted(found)]


# -- who may publish a subject -------------------------------------------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest (at least one token)."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pat):
        if tok == ">":
            return len(sub) > i
        if i >= len(sub) or (tok != "*" and tok != sub[i]):
            return False
    return len(pat) == len(sub)


def may_publish(perms: auth.Permissions, subject: str) -> bool:
    return any(subject_matches(p, subject) for p in perms.publish) and \
        not any(subject_matches(d, subject) for d in perms.deny)


def roles_for(subject: str, project_subject: str | None) -> list[str]:
    """Integration roles allowed to call: ``reader``, ``operator``, and the same limited to
    a project (``operator --project P``), which call the project form of the subject."""
    out = [r for r in auth.ROLES if may_publish(auth.role_permissions("x", r), subject)]
    if project_subject:
        out += [f"{r} --project" for r in auth.ROLES if may_publish(
            auth.role_permissions("x", r, EXAMPLE_PROJECT), project_subject)]
    return out


def callers_for(subject: str) -> list[str]:
    """Corral's own users (services, the gateway) that send this request."""
    out = [s for s in auth.SERVICES if s in auth.CALLS and may_publish(
        auth.service_permissions(s), subject) and not subject.startswith(f"corral.{s}.")
        and f".{s}." not in subject]
    if may_publish(auth.gateway_permissions(), subject):
        out.append(auth.GATEWAY)
    return out


# -- examples ------------------------------------------------------------------------------

_PLACEHOLDERS: dict[str, Any] = {"name": "c1", "project": EXAMPLE_PROJECT, "pool": "default",
                                 "fingerprint": "a1b2c3", "path": "/etc/hostname",
                                 "instance": "c1", "volume": "v1", "snapshot": "snap0",
                                 "network": "corralbr0", "alias": "busybox"}


def _placeholder(name: str, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _example_of(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return _placeholder(name, option, defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "examples" in schema:
        return schema["examples"][0]
    kind = schema.get("type")
    if kind == "string":
        return _PLACEHOLDERS.get(name, name)
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return {}


def _example_of(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    return {k: _placeholder(k, props[k], defs) for k in schema.get("required", [])
            if k in props}


def example(model: type[BaseModel]) -> dict[str, Any]:
    """A smallest valid request: its required fields, and the project when it has one."""
    schema = model.model_json_schema()
    body = _example_of(schema, schema.get("$defs", {}))
    if "project" in model.model_fields:
        body = {"project": EXAMPLE_PROJECT, **body}
    model.model_validate(body)  # an example that does not validate would mislead
    return body


# -- the catalogue -------------------------------------------------------------------------


def _doc(fn: Any) -> str:
    text = inspect.getdoc(fn) or ""
    return " ".join(text.split("\n\n")[0].split())


def lxd_routes() -> dict[tuple[str, str], list[str]]:
    """(service, verb) -> the LXD REST routes the gateway answers with exactly that request
    (its route table's ``ask`` rows): what a verb does, in LXD's words."""
    from services.gateway.routes import ROUTES
    from services.gateway.routing import Ask

    out: dict[tuple[str, str], list[str]] = {}
    for route in ROUTES:
        if isinstance(route.handler, Ask):
            key = (route.handler.service, route.handler.verb)
            text = f"{route.method} {route.path}"
            if text not in out.setdefault(key, []):
                out[key].append(text)
    return out


def build() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Reply": Reply.model_json_schema()}
    routes = lxd_routes()
    entries = []
    for cls in service_classes():
        for spec in cls.endpoints():
            schemas.setdefault(spec.request.__name__, spec.request.model_json_schema())
            if spec.scope == "node":
                subject = subjects.node("<node>", cls.name, spec.verb)
                check = subjects.node(EXAMPLE_NODE, cls.name, spec.verb)
                project_subject = None
            else:
                subject = check = subjects.service(cls.name, spec.verb)
                project_subject = None if spec.verb in ("info", "metrics") else \
                    f"{subjects.PREFIX}.project.<project>.{cls.name}.{spec.verb}"
            entries.append({
                "subject": subject,
                "service": cls.name,
                "verb": spec.verb,
                "scope": spec.scope,
                "project_subject": project_subject,
                "description": _doc(getattr(cls, spec.attr)),
                "lxd_routes": routes.get((cls.name, spec.verb), []),
                "request": {"$ref": f"#/schemas/{spec.request.__name__}"},
                "reply": {"$ref": "#/schemas/Reply"},
                "roles": roles_for(check, project_subject and subjects.project_service(
                    EXAMPLE_PROJECT, cls.name, spec.verb)),
                "callers": callers_for(check),
                "example": example(spec.request),
            })
    return {
        "version": 1,
        "encoding": {
            "default": "application/msgpack",
            "json": "send the header Content-Type: application/json (or a JSON object "
                    "body without that header); the reply is JSON with the same header",
            "errors": "headers Nats-Service-Error-Code (LXD's HTTP-like code) and "
                      "Nats-Service-Error; a JSON caller also gets "
                      '{"type": "error", "error": ..., "error_code": ...}',
        },
        "events": {
            "stream": subjects.EVENTS_STREAM,
            "subjects": f"{subjects.PREFIX}.events.<type>.<project>.<entity>",
            "id_header": ID_HEADER,
            "body": "LXD's event object (JSON): type, timestamp, metadata, location, project",
        },
        "subjects": sorted(entries, key=lambda e: (e["service"], e["verb"])),
        "schemas": dict(sorted(schemas.items())),
    }


def to_json(catalogue: dict[str, Any]) -> str:
    return json.dumps(catalogue, indent=1, sort_keys=False) + "\n"


def to_markdown(catalogue: dict[str, Any]) -> str:
    enc, ev = catalogue["encoding"], catalogue["events"]
    out = [
        "# Corral's NATS API",
        "",
        "<!-- Generated by `corral bus schema --markdown` (services/catalog.py) from the "
        "services' request models: do not edit; `make nats-api` writes it again. -->",
        "",
        "Every Corral service answers requests on NATS subjects. Integrations connect with a "
        "credential made by `corral bus credentials create NAME --role "
        "events|reader|operator [--project P]` (user, password and inbox prefix in "
        "`$CORRAL_DIR/credentials/NAME.json`); a credential limited to a project calls the "
        "`corral.project.<project>.<service>.<verb>` form of a subject, and the body's "
        "`project` must be that project.",
        "",
        f"- Encoding: {enc['default']} by default; JSON: {enc['json']}.",
        f"- Errors: {enc['errors']}.",
        "- Replies: the `Reply` envelope: `type` `sync` with `metadata` (LXD's object or "
        "list), or `async` with `operation` (LXD's operation; watch it with the "
        "`operation` events or `shared.client`).",
        "",
        "```sh",
        "nats req corral.instance.list '{\"project\":\"default\"}' "
        "-H Content-Type:application/json --user U --password P",
        "```",
        "",
        "From Python: `shared.client` (`async with await Client.connect(creds) as c: "
        "await c.instances.list(project=\"default\")`).",
        "",
        "## Events",
        "",
        f"Published on `{ev['subjects']}` with JetStream acknowledgement into the stream "
        f"`{ev['stream']}` (replay from a sequence or a time). Body: {ev['body']}. Each "
        f"event's stable id is the `{ev['id_header']}` header (JetStream drops a resend "
        "with the same id).",
        "",
    ]
    current = None
    for e in catalogue["subjects"]:
        if e["service"] != current:
            current = e["service"]
            out += ["", f"## {current}", "",
                    "| subject | request | roles | description | example |",
                    "|---|---|---|---|---|"]
        model = e["request"]["$ref"].rsplit("/", 1)[-1]
        roles = ", ".join(e["roles"]) or "(Corral only)"
        callers = f"; called by {', '.join(e['callers'])}" if e["callers"] else ""
        lxd = ", ".join(f"`{r}`" for r in e["lxd_routes"])
        desc = " ".join(x for x in (lxd, e["description"]) if x).replace("|", "\\|")
        ex = json.dumps(e["example"], separators=(",", ":")).replace("|", "\\|")
        out.append(f"| `{e['subject']}` | [{model}](#{model.lower()}) | {roles}{callers} "
                   f"| {desc} | `{ex}` |")
    out += ["", "## Schemas", ""]
    for name, schema in catalogue["schemas"].items():
        out += [f"### {name}", "", "```json", json.dumps(schema, indent=1), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


# -- the Python client's methods (shared/client/api.py) ----------------------------------

# Attribute of shared.client.Client per service: the plural where LXD says so.
CLIENT_NAMESPACES = {"instance": "instances", "image": "images", "network": "networks"}

_CLIENT_BASE = '''

class _Requester(Protocol):
    project: str | None

    async def request(self, service: str, verb: str,
                      body: BaseModel | dict[str, Any] | None = None, *,
                      node: str | None = None, timeout: float | None = None) -> Reply: ...


class _Service:
    service = ""

    def __init__(self, client: _Requester) -> None:
        self._client = client

    async def _call(self, verb: str, model: type[BaseModel], request: BaseModel | None,
                    fields: dict[str, Any], node: str | None = None) -> Reply:
        if request is None:
            unknown = sorted(set(fields) - set(model.model_fields))
            if unknown:
                raise TypeError(f"{self.service}.{verb}: unknown field(s) "
                                f"{', '.join(unknown)}; {model.__name__} has "
                                f"{', '.join(sorted(model.model_fields))}")
            if self._client.project and "project" in model.model_fields:
                fields.setdefault("project", self._client.project)
            request = model.model_validate(fields)
        return await self._client.request(self.service, verb, request, node=node)
'''


def _class_name(attr: str) -> str:
    return "".join(part.capitalize() for part in attr.split("_")) + "API"


def client_module() -> str:
    """``shared/client/api.py``: one method per verb, typed by its request model."""
    imports: dict[str, set[str]] = {"shared.models": {"Reply"}}
    classes, groups = [], []
    for cls in service_classes():
        attr = CLIENT_NAMESPACES.get(cls.name, cls.name)
        name = _class_name(attr)
        lines = [f"class {name}(_Service):", f'    """``corral.{cls.name}.<verb>``."""', "",
                 f'    service = "{cls.name}"']
        for spec in cls.endpoints():
            model = spec.request.__name__
            imports.setdefault(spec.request.__module__, set()).add(model)
            method = f"{spec.verb}_" if keyword.iskeyword(spec.verb) else spec.verb
            if spec.scope == "node":
                assert "node" not in spec.request.model_fields, spec
                sig, node = ", *, node: str", ", node"
                subject = f"corral.node.<node>.{cls.name}.{spec.verb}"
            else:
                sig, node, subject = "", "", f"corral.{cls.name}.{spec.verb}"
            lines += ["",
                      f"    async def {method}(",
                      f"            self, request: {model} | None = None, /{sig},",
                      "            **fields: Any) -> Reply:",
                      f'        """``{subject}`` ({model})."""',
                      "        return await self._call(",
                      f'            "{spec.verb}", {model}, request, fields{node})']
        classes.append("\n".join(lines))
        groups.append((attr, name))
    head = ['"""The client\'s methods, one per service verb, typed by its request model.',
            "",
            "Generated by ``make nats-api`` (``python -m services.catalog --client``) from the",
            "services' endpoints: do not edit (tests/test_nats_api.py fails when stale).",
            '"""', "", "from __future__ import annotations", "",
            "from typing import Any, Protocol", "", "from pydantic import BaseModel", ""]
    for module in sorted(imports):
        rel = ".." + module.removeprefix("shared.")
        names = sorted(imports[module])
        line = f"from {rel} import " + ", ".join(names)
        if len(line) <= 100:
            head.append(line)
        else:
            head += [f"from {rel} import ("] + [f"    {n}," for n in names] + [")"]
    tail = ["class Namespaces:",
            '    """The per-service method groups of a :class:`shared.client.Client`."""', ""]
    tail += [f"    {attr}: {name}" for attr, name in groups]
    tail += ["", "    def __init__(self) -> None:"]
    tail += [f"        self.{attr} = {name}(self)  # type: ignore[arg-type]"
             for attr, name in groups]
    return ("\n".join(head) + "\n" + _CLIENT_BASE + "\n\n" + "\n\n\n".join(classes)
            + "\n\n\n" + "\n".join(tail) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m services.catalog [--markdown]`` (what ``corral bus schema`` runs)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="corral bus schema")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--client", action="store_true",
                        help="shared/client/api.py, the client's methods")
    args = parser.parse_args(argv)
    if args.client:
        sys.stdout.write(client_module())
        return 0
    built = build()
    sys.stdout.write(to_markdown(built) if args.markdown else to_json(built))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
