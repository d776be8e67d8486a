"""``lxc move v1 --target node2`` of a RUNNING VM: libvirt live migration between members.

Called by cluster_move.move for a running virtual machine when the request says ``live``
(the stock client sends ``live: true`` unless ``--stateless``). As LXD, the VM must say
``migration.stateful=true`` (LXD refuses a stateful VM migration without it); a VM with
extra disks is refused (LXD: "Cannot live migrate instance with attached custom volume").

The gateway orchestrates four steps on the two members' instance services (the logic and
why it is so: services/instance/vm_migrate.py): prepare on the target (volume, directory),
send on the source (libvirt's live migration, disks mirrored while the guest runs),
cleanup on the source (only after the target runs it), finish on the target (the volume
gets the name, the record the location). A failed send leaves the VM running on the
source and abort removes what the target had made. The downtime libvirt reports, its total
time and the bytes moved go into the operation's metadata (``live_migration``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared import faults
from shared.api import url
from shared.errors import BadRequest, CorralError
from shared.log import get_logger
from shared.models import ObjectRequest
from shared.operations import OperationHandle

from . import responses
from .move_journal import Journal

log = get_logger()
SEND_TIMEOUT = 900.0  # seconds: a TCG guest's memory and disk over the members' link
STEP_TIMEOUT = 120.0
STATEFUL_NEEDED = ("Live migration of virtual machine {name!r} needs migration.stateful=true "
                   "(as LXD): `lxc config set {name} migration.stateful=true`, or move it "
                   "stopped with `lxc move {name} --target {target} --stateless`")


def stateful(inst: dict[str, Any]) -> bool:
    cfg = inst.get("expanded_config") or inst.get("config") or {}
    return str(cfg.get("migration.stateful", "")).lower() in ("true", "1", "yes", "on")


def check(inst: dict[str, Any], target: str) -> None:
    """LXD's refusals, before any operation."""
    name = inst["name"]
    if not stateful(inst):
        raise BadRequest(STATEFUL_NEEDED.format(name=name, target=target))
    extra = [n for n, d in (inst.get("expanded_devices") or {}).items()
             if d.get("type") == "disk" and d.get("path") != "/"]
    if extra:
        raise BadRequest("Cannot live migrate instance with attached custom volume "
                         f"({', '.join(sorted(extra))}): detach it, or move the VM stopped")


async def _ask(ctx: Any, verb: str, node: str, body: dict[str, Any],
               timeout: float = STEP_TIMEOUT) -> Any:
    reply = await ctx.bus.request("instance", verb, body, node=node, timeout=timeout)
    return reply.metadata


async def migrate(ctx: Any, handle: OperationHandle, project: str, name: str, source: str,
                  target: str) -> dict[str, Any]:
    """The four steps, journaled (move_journal: a gateway dying between them leaves a
    record its next start ends); returns the operation's metadata."""
    journal, key = Journal(ctx.bus), handle.id
    await journal.begin(key, {"kind": "live", "project": project, "name": name,
                              "source": source, "target": target,
                              "gateway": ctx.config.node}, stage="prepare")
    try:
        result = await _migrate(ctx, handle, journal, project, name, source, target)
    except CorralError:
        await journal.end(key)  # ended here, forward or back: nothing for a recovery
        raise
    await journal.end(key)
    return result


async def _migrate(ctx: Any, handle: OperationHandle, journal: Journal, project: str,
                   name: str, source: str, target: str) -> dict[str, Any]:
    base = {"project": project, "instance": name}
    await handle.set_metadata(live_migration={"stage": "preparing", "source": source,
                                              "target": target})
    prepared = await _ask(ctx, "vm_migrate_prepare", target, base)
    try:
        await handle.set_metadata(live_migration={"stage": "migrating", "source": source,
                                                  "target": target})
        await journal.step(handle.id, "send", prepared=prepared)
        faults.point("vm_live_move:before_send")
        sent = await _ask(ctx, "vm_migrate_send", source, {**base, "target": prepared},
                          SEND_TIMEOUT)
        # The guest runs on the target now: what finishing it needs, before anything else
        await journal.step(handle.id, "sent", spec=sent["spec"])
        faults.point("vm_live_move:after_send")
    except BaseException:
        try:
            await _ask(ctx, "vm_migrate_abort", target, base)
        except CorralError as exc:  # say it; the operation's error is the send's
            log.warning("live migration: abort on the target failed", instance=name,
                        target=target, error=exc.message)
        raise
    stats = {k: v for k, v in sent.items() if k != "spec"}
    warnings = []
    try:  # the target runs it now: the source's copy goes
        await _ask(ctx, "vm_migrate_cleanup", source, base)
    except CorralError as exc:
        warnings.append(f"the source {source} kept some of it: {exc.message}")
    done = await _ask(ctx, "vm_migrate_finish", target,
                      {**base, "target": prepared, "spec": sent["spec"]})
    if done.get("warning"):
        warnings.append(done["warning"])
    meta = {"source": source, "target": target, "stage": "done", **stats}
    if warnings:
        meta["warnings"] = warnings
    await handle.set_metadata(live_migration=meta)
    return {"live_migration": meta}


async def live_move(ctx: Any, request: web.Request, inst: dict[str, Any],
                    target: str) -> web.StreamResponse:
    """The operation response of a live move (checks first: 400 before any operation)."""
    check(inst, target)
    project = inst.get("project") or request.query.get("project") or "default"
    name, source = inst["name"], inst.get("location") or ""
    if not source or source == target:
        raise BadRequest("Target must be different than instance's current location")

    async def run(handle: OperationHandle) -> dict[str, Any]:
        return await migrate(ctx, handle, project, name, source, target)

    resource = url("instances", name, project)
    op = await ctx.ops.start("Migrating instance", run, project=project,
                             resources={"instances": [resource], "containers": [resource]})
    return responses.async_(op.lxd())


async def recover(ctx: Any, record: dict[str, Any]) -> str:
    """End a live move whose gateway died (move_journal.Recovery): forward once the send
    succeeded (the guest runs on the target: keep it, clean the source, finish: the record
    says the target), back before (abort the target's preparation: the source runs it)."""
    project, name = record["project"], record["name"]
    source, target = record["source"], record["target"]
    base = {"project": project, "instance": name}
    stage = record.get("stage")
    if stage == "sent":
        try:
            await _ask(ctx, "vm_migrate_cleanup", source, base)
        except CorralError as exc:
            log.warning("live move recovery: the source kept some of it", instance=name,
                        error=exc.message)
        await _ask(ctx, "vm_migrate_finish", target, {**base, "target": record["prepared"],
                                                      "spec": record["spec"]})
        return f"moved forward: {name!r} runs on {target!r}"
    if stage == "send":  # cut short during the send: the source's word
        reply = await ctx.bus.request("instance", "get",
                                      ObjectRequest(project=project, name=name), node=source)
        if (reply.metadata or {}).get("status") not in ("Running", "Frozen"):
            raise CorralError(f"Live move of {name!r}: the gateway died during the send "
                              f"and {name!r} no longer runs on {source!r}; its domain may "
                              f"run on {target!r} (not finished: the spec was lost)", 409)
    await _ask(ctx, "vm_migrate_abort", target, base)  # a send in flight fails: it stays
    return f"moved back: {name!r} stays on {source!r}"
