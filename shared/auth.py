"""Who may use the bus: NATS users, what each may publish and subscribe, credentials files.

Why per-user permissions in the server's config (not NATS accounts): every Corral process
and integration shares one set of subjects and buckets, so accounts would need an export and
an import for each of them; a user with allow lists says the same thing in one place, and
nats-server enforces it on every message. The users live in a registry
(``$CORRAL_DIR/nats/users.json``, mode 0600) from which ``auth.conf`` is rendered next to it
and included by ``deploy/nats/*.conf`` (nats-server resolves ``include`` against the
directory of the config file it was given, so ``make up`` starts it through a symlink
``$CORRAL_DIR/nats/single.conf`` to the repository's file). Passwords are random and kept in
clear in those root-only files (the server's bcrypt form needs a library the venv does not
have; the files are as secret as the credentials themselves). Each user also gets a private
inbox prefix ``_INBOX_<user>``: replies, file contents and JetStream deliveries go to
inboxes, and with the shared ``_INBOX.>`` any client could read everyone's replies.

A credentials file (``$CORRAL_DIR/credentials/<name>.json``, mode 0600, directory 0700) is
what :class:`shared.bus.Bus` reads. Revoking rewrites ``auth.conf`` and signals nats-server
to reload it; the server then closes the revoked user's connections.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import subjects

ROLES = ("events", "reader", "operator")
ADMIN = "admin"
ROUTE_USER = "route"
GATEWAY = "gateway"
ALL = "all"
SERVICES = subjects.SERVICES
# Users `init` makes; integrations may not take these names.
BUILTIN = (*SERVICES, GATEWAY, ALL, ADMIN, ROUTE_USER)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Requests each service sends to another: (service, verb). Answered on the cluster subject
# or a node's; both forms are allowed. tests/unit/test_bus_auth.py checks this table
# against every `bus.request(...)` in the services' code, so a new call cannot be
# forgotten here (the server would drop it as a permission violation).
CALLS: dict[str, tuple[tuple[str, str], ...]] = {
    "image": (("instance", "profile_get"), ("storage", "image_volume_delete"),
              ("instance", "publish")),
    "storage": (("instance", "profile_list"), ("image", "blob"), ("instance", "list"),
                ("instance", "patch"), ("instance", "profile_patch"),
                ("instance", "project_get"), ("storage", "pool_member_create"),
                ("storage", "pool_member_delete"), ("storage", "pool_member_update")),
    "network": (("instance", "profile_list"), ("instance", "network_users"),
                ("network", "network_member_create"), ("network", "network_member_delete"),
                ("network", "network_member_update")),
    "instance": (("image", "resolve"), ("storage", "volume_from_image"),
                 ("storage", "volume_delete"), ("storage", "volume_rename"),
                 ("network", "nic_config"), ("network", "nic_limits"),
                 ("network", "nic_release"), ("network", "lease_set"),
                 ("network", "lease_clear"), ("image", "list"),
                 ("storage", "volume_usage"), ("storage", "volume_quota"),
                 ("storage", "volume_path"), ("storage", "volume_create"),
                 ("storage", "volume_copy"), ("storage", "volume_snapshot_create"),
                 ("storage", "volume_snapshot_delete"), ("storage", "volume_snapshot_rename"),
                 ("storage", "volume_snapshot_restore"), ("storage", "volume_snapshot_list"),
                 ("image", "import"), ("storage", "volume_get"), ("storage", "volume_list"),
                 ("storage", "volume_backup_freeze"), ("storage", "volume_backup_get"),
                 ("storage", "volume_backup_delete"), ("storage", "volume_backup_rename"),
                 ("storage", "volume_backup_import"), ("storage", "list"),
                 ("image", "pull")),
    "migration": (("instance", "get"), ("instance", "snapshot_list"),
                  ("storage", "volume_path"), ("instance", "backup_import"),
                  ("instance", "profile_get"), ("storage", "get"),
                  ("storage", "volume_backup_freeze"), ("storage", "volume_backup_delete"),
                  ("instance", "snapshot_create"), ("instance", "snapshot_delete")),
    "hooks": (),  # a run hook's request goes under the hook's own credential, not this one
}

# JetStream buckets each user opens: name -> "kv"/"obj", and whether it writes.
OPERATIONS = ("operations", "kv", True)
# Shared like operations: every service raises its host's warnings, gateways answer
# /1.0/warnings and acknowledge or delete them (shared/warnings.py).
WARNINGS = ("warnings", "kv", True)
BUCKETS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "image": (("images", "kv", True), ("image_aliases", "kv", True), ("images", "obj", True),
              ("transfers", "obj", True), ("server_config", "kv", False), OPERATIONS,
              WARNINGS),
    "storage": (("storage_pools", "kv", True), ("storage_volumes", "kv", True),
                ("images", "obj", False), ("transfers", "obj", False), OPERATIONS, WARNINGS,
                ("members", "kv", False)),  # a pool is made on every member (pool_members)
    "network": (("networks", "kv", True), ("network_acls", "kv", True),
                ("network_forwards", "kv", True), OPERATIONS, WARNINGS,
                ("members", "kv", False)),  # a network is made on every member
    "instance": (("instances", "kv", True), ("profiles", "kv", True), ("projects", "kv", True),
                 ("instance_snapshots", "kv", True), ("backups", "kv", True),
                 ("transfers", "obj", True), OPERATIONS, WARNINGS,
                 ("moves", "kv", False)),  # a VM a live move sent here is kept (vm_migrate)
    "migration": (("transfers", "obj", True), OPERATIONS, WARNINGS),
    "hooks": (("hooks", "kv", True), ("hook_logs", "kv", True), OPERATIONS, WARNINGS),
    GATEWAY: (("transfers", "obj", True), ("images", "obj", False), OPERATIONS,
              ("server_config", "kv", True), ("certificates", "kv", True), WARNINGS,
              ("members", "kv", True),  # cluster heartbeats (shared/cluster.py)
              ("instances", "kv", False),  # where an instance is located (placement.py)
              ("moves", "kv", True)),  # the journal of moves between members (move_journal)
}

# Verbs that only read (LXD's GET of lists and objects): what the `reader` role may call.
# Not file_get, log_get, console_get, blob or volume_path: those hand out contents.
READ_VERBS = ("list", "get", "state", "info", "leases", "acl_list", "acl_get",
              "forward_list", "forward_get", "resources", "alias_list",
              "alias_get", "profile_list", "profile_get", "volume_list", "volume_get",
              "snapshot_list", "snapshot_get", "backup_list", "backup_get",
              "volume_snapshot_list", "network_users", "project_list", "project_get",
              "project_state", "custom_list", "custom_get", "custom_state",
              "custom_snapshot_list", "custom_snapshot_get", "custom_backup_list",
              "custom_backup_get")

STREAMS = f"{subjects.PREFIX}.streams"
# A user that answers may publish to the reply subject of what it received. More than one
# reply per request: `corral-all` runs six micro services on one connection, and each
# answers a `$SRV.PING` (with nats-server's default of 1 all six were refused).
RESPONSES = {"max": 16, "expires": "1h"}  # a request may run long (image unpack)
EVENTS = subjects.EVENTS_ALL
CANCEL = subjects.operation_cancel("*")


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def _stream_read(stream: str) -> list[str]:
    """Reading a stream: info, consumers (ordered and durable), direct gets, acks.

    ``STREAM.NAMES`` (which stream holds a subject: nats-py asks it when a subscription
    names no stream, as the object store's get does) tells only the names of streams.
    """
    api = "$JS.API"
    return [f"{api}.STREAM.NAMES", f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>",
            f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
            f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{api}.CONSUMER.INFO.{stream}.*",
            f"{api}.CONSUMER.DELETE.{stream}.*", f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>"]


def _stream_own(stream: str) -> list[str]:
    api = "$JS.API"
    return _stream_read(stream) + [
        f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.UPDATE.{stream}",
        f"{api}.STREAM.PURGE.{stream}", f"{api}.STREAM.MSG.DELETE.{stream}"]


def bucket_subjects(name: str, kind: str, write: bool) -> list[str]:
    """The JetStream API and data subjects of one KV bucket or object store."""
    stream, data = (f"KV_{name}", f"$KV.{name}.>") if kind == "kv" else \
        (f"OBJ_{name}", f"$O.{name}.>")
    return _stream_own(stream) + [data] if write else _stream_read(stream)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False
    deny: tuple[str, ...] = ()  # denied both ways, over the allows

    def conf(self) -> dict[str, Any]:
        pub: dict[str, Any] = {"allow": sorted(set(self.publish))}
        sub: dict[str, Any] = {"allow": sorted(set(self.subscribe))}
        if self.deny:
            pub["deny"] = sub["deny"] = list(self.deny)
        out: dict[str, Any] = {"publish": pub, "subscribe": sub}
        if self.responses:
            out["allow_responses"] = RESPONSES
        return out


def _call_subjects(svc: str, verb: str) -> list[str]:
    return [subjects.service(svc, verb), subjects.node("*", svc, verb)]


def _service_side(user: str) -> tuple[list[str], list[str]]:
    """What every Corral process needs: events, operations, discovery, its inbox."""
    pub = [EVENTS, "$SRV.>", "$JS.API.INFO", *_stream_own(subjects.EVENTS_STREAM)]
    sub = [CANCEL, "$SRV.>", f"{inbox_prefix(user)}.>"]
    return pub, sub


def service_permissions(svc: str) -> Permissions:
    pub, sub = _service_side(svc)
    sub += [subjects.service(svc, "*"), subjects.node("*", svc, "*"),
            subjects.project_service("*", svc, "*")]
    for callee, verb in CALLS[svc]:
        pub += _call_subjects(callee, verb)
    for bucket in BUCKETS[svc]:
        pub += bucket_subjects(*bucket)
    # Replies to the gateway and to the services that call this one, by name rather than
    # only through allow_responses: nats-server forgets the replies a connection owes when
    # it reloads its config (each `corral bus credentials create/revoke`, each publish or
    # run hook added or removed), and every request in flight then timed out as a 503.
    # Integrations' inboxes stay reachable only through allow_responses.
    callers = {GATEWAY} | {c for c, calls in CALLS.items() if any(t == svc for t, _ in calls)}
    if svc == "instance":  # forwards a request to the node its instance is located on
        pub.append(subjects.node("*", svc, "*"))  # (shared/service.py, Service.node_of)
        callers.add(svc)
    pub += [f"{inbox_prefix(c)}.>" for c in sorted(callers)]
    if svc in ("instance", "storage", "migration"):  # the service end of exec/console/
        # migration websockets and
        pub.append(f"{STREAMS}.*.*.out")  # of backup downloads (custom volumes: storage)
        sub += [f"{STREAMS}.*.*.in", f"{STREAMS}.*.*.attached"]
    if svc == "hooks":  # dead letters of deliveries that ran out of retries; the sweep of
        pub += [f"{subjects.PREFIX}.hooks.dead.*",  # consumers whose hook is gone
                f"$JS.API.CONSUMER.LIST.{subjects.EVENTS_STREAM}"]
    return Permissions(tuple(pub), tuple(sub), responses=True)


def gateway_permissions(user: str = GATEWAY) -> Permissions:
    pub, sub = _service_side(user)
    pub += [subjects.service("*", "*"), subjects.node("*", "*", "*"), CANCEL,
            f"{STREAMS}.*.*.in", f"{STREAMS}.*.*.attached"]
    sub += [EVENTS, f"{STREAMS}.*.*.out", subjects.service(GATEWAY, "*"),
            subjects.node("*", GATEWAY, "*"), subjects.project_service("*", GATEWAY, "*")]
    for bucket in BUCKETS[GATEWAY]:
        pub += bucket_subjects(*bucket)
    return Permissions(tuple(pub), tuple(sub), responses=True)


def all_permissions() -> Permissions:
    """``corral-all``: every service and the gateway on one connection."""
    parts = [service_permissions(s) for s in SERVICES] + [gateway_permissions(ALL)]
    pub = [p for part in parts for p in part.publish] + [f"{inbox_prefix(ALL)}.>"]
    sub = [s for part in parts for s in part.subscribe
           if not any(s.startswith(inbox_prefix(x) + ".") for x in (*SERVICES, GATEWAY))]
    return Permissions(tuple(pub), tuple(sub + [f"{inbox_prefix(ALL)}.>"]), responses=True)


def role_permissions(user: str, role: str, project: str | None = None,
                     publish: tuple[str, ...] = ()) -> Permissions:
    """An integration: ``events`` < ``reader`` < ``operator``; never the byte streams.

    With ``project`` the credential reaches that project only: its requests go to
    ``corral.project.<project>.<svc>.<verb>`` (the service checks the body agrees, see
    ``shared.service.check_project_claim``), it hears only that project's events, and it
    gets no node verb, cancel or operations bucket (those are not per project).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if project:
        perms = _project_role_permissions(user, role, project)
        return Permissions(perms.publish + publish, perms.subscribe, deny=perms.deny)
    pub = ["$JS.API.INFO", *_stream_read(subjects.EVENTS_STREAM), *publish]
    sub = [EVENTS, f"{inbox_prefix(user)}.>"]
    if role in ("reader", "operator"):
        pub += ["$SRV.>", *bucket_subjects("operations", "kv", False),
                *bucket_subjects("warnings", "kv", False)]
    if role == "reader":
        for verb in READ_VERBS:
            pub += _call_subjects("*", verb)
    if role == "operator":
        pub += [subjects.service("*", "*"), subjects.node("*", "*", "*"), CANCEL]
    return Permissions(tuple(pub), tuple(sub), deny=(f"{STREAMS}.>",))


def _project_role_permissions(user: str, role: str, project: str) -> Permissions:
    events = f"{subjects.PREFIX}.events.*.{subjects.token(project)}.>"
    pub = ["$JS.API.INFO"]  # never an empty allow list
    if role == "reader":
        pub += [subjects.project_service(project, "*", verb) for verb in READ_VERBS]
    if role == "operator":
        pub.append(subjects.project_service(project, "*", "*"))
    return Permissions(tuple(pub), (events, f"{inbox_prefix(user)}.>"),
                       deny=(f"{STREAMS}.>",))


def admin_permissions() -> Permissions:
    """Root's break-glass user (tests, `nats` tools): everything but the byte streams."""
    return Permissions((">",), (">",), responses=True, deny=(f"{STREAMS}.>",))


def permissions_of(user: str, entry: dict[str, Any]) -> Permissions:
    if user in SERVICES:
        return service_permissions(user)
    if user == GATEWAY:
        return gateway_permissions()
    if user == ALL:
        return all_permissions()
    if user == ADMIN:
        return admin_permissions()
    return role_permissions(user, entry["role"], entry.get("project") or None,
                            tuple(entry.get("publish") or ()))


# -- files ---------------------------------------------------------------------------------


class AuthError(Exception):
    """A bad name, role or state of the files; the message says what to do."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Paths:
    """Where the auth files of one CORRAL_DIR live."""

    corral_dir: Path

    @property
    def nats_dir(self) -> Path:
        return self.corral_dir / "nats"

    @property
    def registry(self) -> Path:
        return self.nats_dir / "users.json"

    @property
    def auth_conf(self) -> Path:
        return self.nats_dir / "auth.conf"

    @property
    def route_conf(self) -> Path:
        return self.nats_dir / "route-auth.conf"

    @property
    def credentials_dir(self) -> Path:
        return self.corral_dir / "credentials"

    def credentials(self, name: str) -> Path:
        return self.credentials_dir / f"{name}.json"

    @property
    def pid_file(self) -> Path:
        return self.corral_dir / "run" / "nats.pid"


def _write_private(path: Path, text: str) -> None:
    """Write a root-only file atomically (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def load_registry(paths: Paths) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(paths.registry.read_text())
    except FileNotFoundError:
        return {}


def render_auth_conf(users: dict[str, dict[str, Any]]) -> str:
    """nats-server's ``authorization`` block (its config syntax accepts JSON values)."""
    entries = [{"user": name, "password": entry["password"],
                "permissions": permissions_of(name, entry).conf()}
               for name, entry in sorted(users.items()) if name != ROUTE_USER]
    return ("# Generated by shared/auth.py from users.json: do not edit (corral bus "
            "credentials ...).\n# No user here means no connection: there is no anonymous "
            "access.\nauthorization: " + json.dumps({"users": entries}, indent=1) + "\n")


def _save(paths: Paths, users: dict[str, dict[str, Any]]) -> None:
    _private_dir(paths.nats_dir)
    _write_private(paths.registry, json.dumps(users, indent=1, sort_keys=True) + "\n")
    _write_private(paths.auth_conf, render_auth_conf(users))
    route = users[ROUTE_USER]["password"]
    _write_private(paths.route_conf, "# Generated by shared/auth.py: route connections "
                   "between cluster nodes.\nauthorization: "
                   + json.dumps({"user": ROUTE_USER, "password": route}) + "\n")


def _write_credentials(paths: Paths, name: str, entry: dict[str, Any]) -> Path:
    _private_dir(paths.credentials_dir)
    path = paths.credentials(name)
    body = {"user": name, "password": entry["password"], "inbox_prefix": inbox_prefix(name)}
    for key in ("role", "project"):
        if entry.get(key):
            body[key] = entry[key]
    _write_private(path, json.dumps(body, indent=1) + "\n")
    return path


def init(corral_dir: Path) -> list[str]:
    """Make the built-in users and their credentials; keep what exists (idempotent).

    Returns the names it added. Integration users are kept as they are.
    """
    paths = Paths(corral_dir)
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)  # nats-server -P writes there
    users = load_registry(paths)
    added = [n for n in BUILTIN if n not in users]
    for name in added:
        users[name] = {"password": secrets.token_urlsafe(32)}
    if added or not paths.auth_conf.exists() or not paths.route_conf.exists():
        _save(paths, users)
    else:  # permissions may have changed with the code: render again, same passwords
        _write_private(paths.auth_conf, render_auth_conf(users))
    for name in BUILTIN:
        if name != ROUTE_USER and (name in added or not paths.credentials(name).exists()):
            _write_credentials(paths, name, users[name])
    return added


def create(corral_dir: Path, name: str, role: str, project: str | None = None,
           publish: tuple[str, ...] = ()) -> Path:
    """A new integration credential; returns its file. ``publish``: literal subjects it
    may publish to beyond its role (a publish hook's subject)."""
    if not NAME_RE.match(name):
        raise AuthError(f"Invalid credential name {name!r}: use 1-63 lowercase letters, "
                        "digits, '-' or '_', starting with a letter or digit")
    if name in BUILTIN:
        raise AuthError(f"{name!r} is a built-in user of Corral; choose another name")
    if role not in ROLES:
        raise AuthError(f"Invalid role {role!r}: use one of {', '.join(ROLES)}")
    paths = Paths(corral_dir)
    users = load_registry(paths)
    if not users:
        raise AuthError(f"No bus users in {paths.registry}: run 'make up' first", 503)
    if name in users:
        raise AuthError(f"Credential {name!r} already exists; revoke it first", 409)
    users[name] = {"password": secrets.token_urlsafe(32), "role": role}
    if project:
        users[name]["project"] = project
    if publish:
        users[name]["publish"] = list(publish)
    _save(paths, users)
    return _write_credentials(paths, name, users[name])


def revoke(corral_dir: Path, name: str) -> None:
    if name in BUILTIN:
        raise AuthError(f"{name!r} is a built-in user of Corral and cannot be revoked")
    paths = Paths(corral_dir)
    users = load_registry(paths)
    if name not in users:
        raise AuthError(f"Credential {name!r} not found", 404)
    del users[name]
    _save(paths, users)
    paths.credentials(name).unlink(missing_ok=True)


def integrations(corral_dir: Path) -> list[dict[str, Any]]:
    users = load_registry(Paths(corral_dir))
    return [{"name": n, "role": e.get("role", ""), "project": e.get("project", ""),
             "credentials": str(Paths(corral_dir).credentials(n))}
            for n, e in sorted(users.items()) if n not in BUILTIN]


def route_urls(corral_dir: Path, addresses: list[str]) -> str:
    """``CORRAL_NATS_ROUTES`` for cluster.conf: each ``host:port`` with the route user.

    nats-server sends only the credentials written in a route's URL when it dials a peer
    (its own cluster ``authorization`` checks the peers that dial it), so the URLs carry
    the route user's password; keep that variable as private as route-auth.conf.
    """
    users = load_registry(Paths(corral_dir))
    if ROUTE_USER not in users:
        raise AuthError(f"No route user in {Paths(corral_dir).registry}: run init first", 503)
    password = users[ROUTE_USER]["password"]
    return "[" + ", ".join(f"nats-route://{ROUTE_USER}:{password}@{a}" for a in addresses) + "]"


def reload_server(corral_dir: Path) -> int | None:
    """Signal this CORRAL_DIR's nats-server to re-read its config; its PID or None.

    The PID comes from ``run/nats.pid`` and counts only while the process runs
    nats-server (a recycled PID is never signalled).
    """
    pid_file = Paths(corral_dir).pid_file
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if not any(Path(arg.decode(errors="replace")).name == "nats-server" for arg in cmdline):
        return None
    os.kill(pid, signal.SIGHUP)
    return pid


def link_config(corral_dir: Path, conf: Path) -> Path:
    """Link ``conf`` and its sibling configs into ``$CORRAL_DIR/nats``; the link of ``conf``.

    nats-server resolves ``include`` against the directory of the path it was given, so
    through these links ``include "auth.conf"`` finds this CORRAL_DIR's users (and
    cluster-node<N>.conf finds cluster.conf).
    """
    nats_dir = Paths(corral_dir).nats_dir
    _private_dir(nats_dir)
    for source in conf.resolve().parent.glob("*.conf"):
        link = nats_dir / source.name
        if link.is_symlink() and link.resolve() == source:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return nats_dir / conf.name


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.auth init [--link CONF]`` for deploy/up.sh and the systemd unit."""
    parser = argparse.ArgumentParser(prog="python -m shared.auth")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("CORRAL_DIR", "var")))
    sub = parser.add_subparsers(dest="cmd", required=True)
    init_cmd = sub.add_parser("init", help="make the built-in users and credentials "
                              "(idempotent)")
    init_cmd.add_argument("--link", type=Path, metavar="CONF",
                          help="also link this server config (and its siblings) beside "
                          "auth.conf")
    args = parser.parse_args(argv)
    corral_dir = args.dir.absolute()
    added = init(corral_dir)
    if added:
        print(f"corral: bus users made: {', '.join(added)}")
    if args.link:
        link_config(corral_dir, args.link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
