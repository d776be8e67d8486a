"""The subject map, in one place (see docs/architecture.md).

- ``corral.<service>.<verb>``: cluster-wide requests, queue group, any replica answers.
- ``corral.node.<node>.<service>.<verb>``: work bound to one host.
- ``corral.events.<type>.<project>.<entity>``: events (JSON, LXD's shape).
- ``corral.operations.<id>.cancel``: ask whoever runs an operation to cancel it.
- ``corral.project.<project>.<service>.<verb>``: the same cluster-wide requests, for
  integrations whose credential is limited to one project: nats-server lets them publish
  only under their project's token, and the service refuses a request whose body names
  another project (``shared.service.check_project_claim``).
"""

from __future__ import annotations

PREFIX = "corral"
SERVICES = ("image", "instance", "storage", "network", "migration", "hooks")
EVENTS_STREAM = "CORRAL_EVENTS"
EVENTS_ALL = f"{PREFIX}.events.>"


def service(svc: str, verb: str) -> str:
    return f"{PREFIX}.{svc}.{verb}"


def project_service(project: str, svc: str, verb: str) -> str:
    """A request limited to ``project`` (``*``: the wildcard services subscribe to)."""
    tok = project if project == "*" else token(project)
    return f"{PREFIX}.project.{tok}.{svc}.{verb}"


def node(node_name: str, svc: str, verb: str) -> str:
    return f"{PREFIX}.node.{node_name}.{svc}.{verb}"


def event(type_: str, project: str, entity: str) -> str:
    return f"{PREFIX}.events.{token(type_)}.{token(project)}.{token(entity)}"


def operation_cancel(op_id: str) -> str:
    return f"{PREFIX}.operations.{op_id}.cancel"


def token(value: str) -> str:
    """A NATS subject token: no dots, wildcards or spaces."""
    out = "".join("_" if c in ".*> \t" else c for c in value)
    return out or "_"
