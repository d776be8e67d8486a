"""Where a request about instances goes in a cluster: the node the instance is located on.

Why in the gateway: every node's gateway is "one API" (LXD forwards a request to the
member that holds the instance, wherever the client connected). The instance services
answer only for the instances located on their node (``corral.node.<node>.instance.*``),
so the gateway names that node: for a request about one instance, the ``location`` of
its record in the shared ``instances`` bucket; for a create, ``?target=`` (checked
against the ``members`` bucket) or the online member with the most room. Standalone
(``config.cluster`` off) nothing here runs: every request goes where it always went.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared import cluster
from shared.bus import Bus
from shared.config import Config
from shared.errors import BadRequest, Unavailable
from shared.messages.instance import about_one_instance
from shared.models import Message
from shared.state import Store, key

# Seconds at most a create placed here counts against its node before its record shows.
RECENT = 30.0


def located(verb: str) -> bool:
    """``verb`` is about one existing instance (its ``name``): its node must answer;
    the others go to the gateway's own node (profiles and projects are the same shared
    records on every node), except a create (target or placement, see ``node_for``)."""
    return about_one_instance(verb)


@dataclass(frozen=True)
class Candidate:
    """A member as placement sees it: its record, and LXD's member config and groups when
    the record carries them (``scheduler.instance``; ``groups``, default ``default``)."""

    member: cluster.Member
    config: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ("default",)

    @property
    def scheduler(self) -> str:
        return self.config.get("scheduler.instance") or "all"


def eligible(candidates: list[Candidate], group: str | None, now: float | None = None
             ) -> list[cluster.Member]:
    """The online members placement may choose, as LXD's ``scheduler.instance`` says:
    ``all`` always, ``group`` only when the launch names one of its groups
    (``--target @group``), ``manual`` never (only by ``--target`` naming it); an
    evacuated member never."""
    out = []
    for c in candidates:
        if not cluster.is_online(c.member, now) or c.scheduler == "manual" \
                or c.member.evacuated:  # `lxc cluster evacuate`: nothing new lands there
            continue
        if group is None and c.scheduler == "group":
            continue
        if group is not None and group not in c.groups:
            continue
        out.append(c.member)
    return out


def rank(online: list[cluster.Member], counts: Counter[Any]) -> list[cluster.Member]:
    """Members best first: fewest instances, then most free memory, then most CPUs."""
    return sorted(online, key=lambda m: (counts[m.name], -m.resources.memory_free,
                                         -m.resources.cpus, m.name))


class Placement:
    def __init__(self, bus: Bus, config: Config) -> None:
        self.bus = bus
        self.config = config
        self._instances: Store | None = None
        self._members: Store | None = None
        # (when, node, record key) of the creates placed here, until their record shows
        self._recent: list[tuple[float, str, str]] = []

    async def _open(self) -> tuple[Store, Store]:
        """The buckets, opened on first use (the instance service may make its bucket
        after this gateway started; the gateway may only read it)."""
        if self._instances is None:
            try:
                self._instances = await Store(self.bus, "instances").open()
            except Exception as exc:
                raise Unavailable(f"The instances bucket is not readable yet: {exc}") from exc
        if self._members is None:
            self._members = await cluster.open_members(self.bus)
        return self._instances, self._members

    async def location(self, project: str, name: str) -> str | None:
        """The node instance ``name`` of ``project`` is located on; None when unknown
        (no such instance: its own node's 404 answers)."""
        instances, _ = await self._open()
        found = await instances.get(key(project, name.split("/", 1)[0]))
        if found is None:
            return None
        return found[0].get("location") or None

    async def candidates(self) -> list[Candidate]:
        """Every member record but those ``lxc cluster remove`` left as tombstones."""
        _, members = await self._open()
        out = []
        for value in (await members.items()).values():
            if value.get("removed"):
                continue
            try:
                member = cluster.Member.model_validate(value)
            except ValueError:
                continue
            config = value.get("config") if isinstance(value.get("config"), dict) else {}
            groups = tuple(value.get("groups") or ("default",))
            out.append(Candidate(member, {str(k): str(v) for k, v in config.items()},
                                 groups))
        return sorted(out, key=lambda c: c.member.name)

    async def members(self) -> list[cluster.Member]:
        return [c.member for c in await self.candidates()]

    async def node_for(self, verb: str, req: Message, target: str | None = None
                       ) -> str | None:
        """The node that must answer instance ``verb`` for ``req``; None: this one."""
        if not self.config.cluster:
            return None
        project = getattr(req, "project", "default")
        if verb in ("create", "backup_import"):
            if target and target.startswith("@"):  # a cluster group: placement within it
                return await self.choose(project, getattr(req, "body", None) or {},
                                         group=target[1:])
            if target:
                return await self.check_target(target)
            body = getattr(req, "body", None) or {}
            source = body.get("source") if isinstance(body, dict) else None
            if isinstance(source, dict) and source.get("type") == "copy" \
                    and isinstance(source.get("source"), str):
                # a local copy is made where its source's volume is
                where = await self.location(project, source["source"])
                if where:
                    return where
            return await self.choose(project, getattr(req, "body", None) or {})
        if located(verb) and getattr(req, "name", None):
            return await self.location(project, req.name)  # type: ignore[attr-defined]
        return None

    async def check_target(self, target: str) -> str:
        """``?target=``: a member that is online (LXD refuses others the same way)."""
        members = {m.name: m for m in await self.members()}
        member = members.get(target)
        if member is None:
            known = ", ".join(sorted(members)) or "none"
            raise BadRequest(f"Target member {target!r} is not a member of the cluster "
                             f"(members: {known})")
        if member.evacuated:
            raise BadRequest(f"Target member {target!r} is evacuated: choose another, or "
                             f"bring it back with `lxc cluster restore {target}`")
        if not cluster.is_online(member):
            _status, why = cluster.status_of(member)
            raise Unavailable(f"Target member {target!r} is offline ({why}): choose another "
                              "or bring it back")
        return target

    async def choose(self, project: str = "default", body: dict[str, Any] | None = None,
                     group: str | None = None) -> str:
        """The online member with the fewest instances, then the most free memory, then
        the most CPUs (LXD's scheduler weighs the same); this node when none is known.

        The instances are counted from their records (exact, where a heartbeat's count is
        seconds old), plus the creates placed here whose record is not written yet (a
        burst of launches must spread, not pile up on the first choice)."""
        now = time.time()
        candidates = await self.candidates()
        if group is not None and not any(group in c.groups for c in candidates):
            raise BadRequest(f"Cluster group {group!r} has no member (target @{group})")
        if not candidates:  # no member record at all (yet): this node
            return self.config.node
        online = eligible(candidates, group, now)
        if not online:
            where = f"in cluster group {group!r}" if group is not None else "in the cluster"
            raise Unavailable(f"No cluster member {where} can take the instance: none is "
                              "online with scheduler.instance allowing it; name one with "
                              "--target")
        instances, _ = await self._open()
        records = await instances.items()
        counts = Counter(r.get("location") for r in records.values())
        self._recent = [p for p in self._recent if now - p[0] < RECENT and p[2] not in records]
        counts.update(n for _t, n, _k in self._recent)
        best = rank(online, counts)[0].name
        name = (body or {}).get("name")
        if isinstance(name, str) and name:
            self._recent.append((now, best, key(project, name)))
        return best

    def unreachable(self, node: str, verb: str, exc: Exception) -> Exception:
        """A clearer error for a request whose node did not answer."""
        if isinstance(exc, Unavailable) and node != self.config.node:
            role = "chosen for the instance" if verb in ("create", "backup_import") else \
                "where the instance is located"
            return Unavailable(f"Cluster member {node!r}, {role}, is not answering: {exc}")
        return exc
