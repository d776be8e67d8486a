"""The hooks service: automation hooks stored in KV ``hooks``, each delivered by a runner.

Why a service of its own (not part of the gateway or the instance service): deliveries
wait on receivers that may be slow or down, for minutes with retries; in the gateway
they would compete with the API and every gateway replica would deliver each event again;
in the instance service a webhook timeout would share the loop that starts containers.
One process owning the hooks and their consumers also gives one writer for their KV
records and one place that makes their bus credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import nats.js.errors as jse

from shared import faults, subjects
from shared.errors import BadRequest, Conflict, NotFound
from shared.models import (
    CreateRequest,
    ListRequest,
    ObjectRequest,
    Reply,
    ServerInfoReply,
    lxd_time,
)
from shared.service import Service, endpoint, main_for
from shared.state import Store

from . import actions, credentials, rules
from .runner import Context, HookRunner, consumer_config, durable_name

API_EXTENSIONS = ["corral_hooks"]


class HooksService(Service):
    name = "hooks"
    description = "Corral automation hooks: webhooks, NATS publishes and commands on events"

    async def setup(self) -> None:
        self.hooks = await Store(self.bus, "hooks", cache=True,
                                 description="corral automation hooks").open()
        self.logs = await Store(self.bus, "hook_logs", history=1,
                                description="corral hooks' recent deliveries").open()
        self.http = actions.HTTP()
        self.ctx = Context(self.bus, self.events, self.logs, self.config.dir, self.log,
                           self.http)
        self.runners: dict[str, HookRunner] = {}
        self._lock = asyncio.Lock()
        await self._sweep()
        for hook in (await self.hooks.items()).values():
            await self._ensure_consumer(hook)
            await self._start(hook)

    async def teardown(self) -> None:
        for runner in list(self.runners.values()):
            await runner.stop()
        await self.http.close()

    def server_info(self) -> ServerInfoReply:
        return ServerInfoReply(api_extensions=API_EXTENSIONS)

    # -- crash safety ---------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Consumers and credentials of hooks that have no record: a create or delete that
        a crash interrupted (the record is written last and removed first)."""
        names = set(await self.hooks.keys())
        try:
            consumers = await self.bus.js.consumers_info(subjects.EVENTS_STREAM)
        except Exception:
            consumers = []
        for info in consumers:
            cname = info.name or ""
            if cname.startswith("hook-") and cname[len("hook-"):] not in names:
                with contextlib.suppress(Exception):
                    await self.bus.js.delete_consumer(subjects.EVENTS_STREAM, cname)
        for name in credentials.orphans(self.config.dir, names):
            with contextlib.suppress(Exception):
                await credentials.remove(self.config.dir, name)

    # -- consumers and runners ------------------------------------------------------------

    async def _ensure_consumer(self, hook: dict[str, Any], start_seq: int | None = None
                               ) -> None:
        """Create the hook's durable consumer, or keep it (its position) when it exists;
        a changed filter moves it to the new one from where it was."""
        durable = durable_name(hook["name"])
        try:
            info = await self.bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
        except jse.NotFoundError:
            info = None
        if info is not None:
            if info.config.filter_subject == rules.filter_subject(hook):
                return
            start_seq = info.ack_floor.stream_seq + 1 if info.ack_floor else None
            await self.bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)
        await self.bus.js.add_consumer(subjects.EVENTS_STREAM,
                                       consumer_config(hook, start_seq))

    async def _start(self, hook: dict[str, Any]) -> None:
        old = self.runners.pop(hook["name"], None)
        if old:
            await old.stop()
        runner = HookRunner(self.ctx, hook)
        await runner.start()
        self.runners[hook["name"]] = runner

    async def _stop(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner:
            await runner.stop()

    # -- endpoints ------------------------------------------------------------------------

    @endpoint("list", ListRequest)
    async def list_hooks(self, req: ListRequest) -> Reply:
        items = await self.hooks.items()
        if req.recursion:
            return Reply(metadata=[rules.public(h) for h in items.values()])
        return Reply(metadata=[f"/1.0/hooks/{n}" for n in items])

    @endpoint("get", ObjectRequest)
    async def get_hook(self, req: ObjectRequest) -> Reply:
        hook, _rev = await self._require(req.name)
        out = rules.public(hook)
        try:
            info = await self.bus.js.consumer_info(subjects.EVENTS_STREAM,
                                                   durable_name(hook["name"]))
            out["status"] = {"pending": info.num_pending or 0,
                             "in_flight": info.num_ack_pending or 0,
                             "delivered_seq": info.ack_floor.stream_seq if info.ack_floor
                             else 0}
        except Exception:
            out["status"] = {}
        return Reply(metadata=out)

    @endpoint("create", CreateRequest)
    async def create_hook(self, req: CreateRequest) -> Reply:
        hook = rules.check(req.body)
        async with self._lock:
            if await self.hooks.get(hook["name"]) is not None:
                raise Conflict(f"Hook {hook['name']!r} already exists")
            hook["created_at"] = _now()
            made_consumer = False
            try:
                await credentials.ensure(self.config.dir, hook)
                await self._ensure_consumer(hook)
                made_consumer = True
                faults.point("hooks:after_consumer")  # crash tests: swept at the next start
                await self.hooks.create(hook["name"], hook, "Hook")
            except BaseException:
                if made_consumer:
                    with contextlib.suppress(Exception):
                        await self.bus.js.delete_consumer(subjects.EVENTS_STREAM,
                                                          durable_name(hook["name"]))
                with contextlib.suppress(Exception):
                    await credentials.remove(self.config.dir, hook["name"])
                raise
            await self._start(hook)
        await self.events.lifecycle("hook-created", f"/1.0/hooks/{hook['name']}",
                                    requestor=req.requestor)
        return Reply(metadata=rules.public(hook))

    @endpoint("update", ObjectRequest)
    async def update_hook(self, req: ObjectRequest) -> Reply:
        return await self._change(req, merge=False)

    @endpoint("patch", ObjectRequest)
    async def patch_hook(self, req: ObjectRequest) -> Reply:
        return await self._change(req, merge=True)

    async def _change(self, req: ObjectRequest, merge: bool) -> Reply:
        async with self._lock:
            old, rev = await self._require(req.name)
            body = dict(req.body or {})
            if body.get("name", req.name) != req.name:
                raise BadRequest("A hook cannot be renamed: delete it and add it again")
            body.pop("created_at", None)
            body.pop("status", None)
            if merge:
                base = {k: v for k, v in old.items() if k != "created_at"}
                if any(k in body for k in ("webhook", "publish", "run")):
                    for k in ("webhook", "publish", "run"):
                        base.pop(k, None)
                body = {**base, **body}
            new_hook = body.get("webhook")
            if isinstance(new_hook, dict) and new_hook.get("secret") in ("(set)", None) \
                    and old.get("webhook"):  # GET shows "(set)": keep the secret
                body["webhook"] = {**new_hook, "secret": old["webhook"].get("secret", "")}
            hook = rules.check(body, req.name)
            hook["created_at"] = old.get("created_at", _now())
            if credentials.needed(hook) != credentials.needed(old):
                await credentials.ensure(self.config.dir, hook)
            await self._ensure_consumer(hook)
            await self.hooks.update(req.name, hook, rev)
            await self._start(hook)
        await self.events.lifecycle("hook-updated", f"/1.0/hooks/{req.name}",
                                    requestor=req.requestor)
        return Reply(metadata=rules.public(hook))

    @endpoint("delete", ObjectRequest)
    async def delete_hook(self, req: ObjectRequest) -> Reply:
        async with self._lock:
            await self._require(req.name)
            await self._stop(req.name)
            await self.hooks.delete(req.name)  # the record first: a crash leaves orphans
            with contextlib.suppress(jse.NotFoundError):  # that the next start sweeps
                await self.bus.js.delete_consumer(subjects.EVENTS_STREAM,
                                                  durable_name(req.name))
            await credentials.remove(self.config.dir, req.name)
            await self.logs.delete(req.name)
        await self.events.lifecycle("hook-deleted", f"/1.0/hooks/{req.name}",
                                    requestor=req.requestor)
        return Reply(metadata={})

    @endpoint("log", ObjectRequest)
    async def hook_log(self, req: ObjectRequest) -> Reply:
        await self._require(req.name)
        runner = self.runners.get(req.name)
        if runner is not None:
            return Reply(metadata=runner.log.entries)
        found = await self.logs.get(req.name)
        return Reply(metadata=(found[0] if found else {}).get("entries", []))

    @endpoint("test", ObjectRequest)
    async def test_hook(self, req: ObjectRequest) -> Reply:
        """Deliver one made-up event now, once, without the stream (``corral hook test``):
        the body may give the event; otherwise one the hook would match."""
        hook, _rev = await self._require(req.name)
        event = (req.body or {}).get("event") or _sample_event(hook)
        if not isinstance(event, dict):
            raise BadRequest("Invalid test event: give a JSON object")
        body = json.dumps(event, separators=(",", ":")).encode()
        runner = self.runners.get(req.name) or HookRunner(self.ctx, hook)
        entry = await runner.deliver(body, event, f"test-{uuid.uuid4()}", retries=0,
                                     dead_letter=False)
        return Reply(metadata=entry)

    async def _require(self, name: str) -> tuple[dict[str, Any], int]:
        found = await self.hooks.get(name)
        if found is None:
            raise NotFound(f"Hook {name!r} not found")
        return found


def _now() -> str:
    return lxd_time()


def _sample_event(hook: dict[str, Any]) -> dict[str, Any]:
    action = hook.get("action") or "*"
    if any(c in action for c in "*?["):
        action = "hook-test"
    project = hook.get("project") or "default"
    meta: dict[str, Any] = {"action": action, "source": f"/1.0/hooks/{hook['name']}"}
    if hook["type"] != "lifecycle":
        meta = {"message": "corral hook test", "source": f"/1.0/hooks/{hook['name']}"}
    return {"type": hook["type"], "timestamp": lxd_time(), "metadata": meta,
            "location": "none", "project": project}


main = main_for(HooksService)
