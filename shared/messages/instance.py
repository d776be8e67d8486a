"""Bus messages of the instance service (besides the generic CRUD models).

The gateway sends ``CreateRequest`` (``create``), ``ObjectRequest`` (``get``, ``update``,
``patch``, ``rename``, ``delete``, ``state``) and ``ListRequest`` (``list``) as for any
collection; ``state_put`` carries LXD's state change body as a typed model, and
``network_users`` (asked by the network service) is ``NetworkUsersRequest`` from
``shared.messages.network``.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.messages.network import NetworkUsersRequest
from shared.models import ListRequest, Request

StateAction = Literal["start", "stop", "restart", "freeze", "unfreeze"]


class StatePutRequest(Request):
    """``PUT /1.0/instances/<name>/state``: LXD's ``InstanceStatePut`` plus the name.

    ``timeout`` is seconds for a clean shutdown (-1: LXD's "wait as long as it takes", here
    capped by the service); ``force`` kills instead of asking init to shut down.
    """

    name: str
    action: StateAction
    timeout: float = -1
    force: bool = False
    stateful: bool = False


__all__ = ["NetworkUsersRequest", "StateAction", "StatePutRequest"]


class InstanceListRequest(ListRequest):
    """``GET /1.0/instances`` asked of one node. ``target`` (a cluster's member, as LXD's
    ``?target=``): only the instances located there; asked of another node than the
    target, they are listed with status Error (their own node did not answer)."""

    target: str = ""


class VmMigrateRequest(Request):
    """``vm_migrate_*`` (a running VM moved live between members,
    services/instance/vm_migrate.py): the instance in ``instance``, not ``name`` (a verb
    with a ``name`` is forwarded to the member the instance is located on, and prepare,
    finish and abort run on the target), and what the previous step answered."""

    instance: str
    target: dict[str, Any] = {}  # prepare's answer (send, finish)
    spec: dict[str, Any] = {}  # the source's VM spec, from send's answer (finish)


# Instance verbs not about one existing instance (lists, creates, profiles, projects,
# the host's resources): any node answers them; every other verb names an instance
# (``name``) and, in a cluster, is answered by the node it is located on.
UNLOCATED_VERBS = frozenset({"list", "create", "backup_import", "resources",
                             "network_users", "info", "metrics"})
UNLOCATED_PREFIXES = ("profile_", "project_")


def about_one_instance(verb: str) -> bool:
    """``verb`` is about one existing instance: its node must answer (placement.py,
    cluster forwarding in shared/service.py)."""
    return verb not in UNLOCATED_VERBS and not verb.startswith(UNLOCATED_PREFIXES)
