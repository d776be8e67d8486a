"""Exec, files, console and logs of an instance: thin routes to the instance service.

Files and logs are raw bodies with LXD's ``X-LXD-*`` headers, not JSON; bodies too big for
one bus message travel through the transfers object store (see ``shared.messages.exec``).
Served under ``/1.0/instances`` and the older ``/1.0/containers`` alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from shared import blobs
from shared.errors import BadRequest
from shared.messages.exec import ExecRequest, FileRequest, LogRequest, pack, unpack

from .. import responses

if TYPE_CHECKING:
    from ..app import Gateway

PATHS: list[str] = []
SVC = "instance"
BASES = ("/1.0/instances", "/1.0/containers")


def _int_header(request: web.Request, name: str, base: int = 10) -> int:
    raw = request.headers.get(name, "").strip()
    if not raw:
        return -1
    try:
        return int(raw, base)
    except ValueError:
        raise BadRequest(f"Invalid {name} header {raw!r}: expected a number") from None


def _raw(data: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream",
                        headers=headers or {})


def register(r: web.UrlDispatcher, gw: "Gateway") -> None:
    from ..app import project_of, read_json, requestor

    def common(request: web.Request) -> dict[str, Any]:
        return {"project": project_of(request), "requestor": requestor(request),
                "name": request.match_info["name"]}

    async def exec_(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("Invalid request body: expected a JSON object")
        return gw.render(await gw.ask(SVC, "exec", ExecRequest(**common(request), body=body)))

    async def files(request: web.Request) -> web.StreamResponse:
        args = {**common(request), "path": request.query.get("path", "")}
        if request.method == "DELETE":
            return gw.render(await gw.ask(SVC, "file_delete", FileRequest(**args)))
        if request.method == "POST":
            return await push(request, args)
        meta = (await gw.ask(SVC, "file_get", FileRequest(**args))).metadata
        headers = {"X-LXD-uid": str(meta["uid"]), "X-LXD-gid": str(meta["gid"]),
                   "X-LXD-mode": f"{meta['mode']:04o}", "X-LXD-type": meta["type"]}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        if meta["type"] == "directory":
            resp = responses.sync(meta["entries"])
            resp.headers.update(headers)
            return resp
        return _raw(await unpack(gw.bus, meta.get("data"), meta.get("blob")), headers)

    async def push(request: web.Request, args: dict[str, Any]) -> web.Response:
        h = request.headers
        args.update(uid=_int_header(request, "X-LXD-uid"),
                    gid=_int_header(request, "X-LXD-gid"),
                    mode=_int_header(request, "X-LXD-mode", 8),
                    type=h.get("X-LXD-type") or "file",
                    write=h.get("X-LXD-write") or "overwrite")
        args.update(await pack(gw.bus, await request.read(), "upload"))
        try:
            reply = await gw.ask(SVC, "file_put", FileRequest(**args))
        except Exception:
            if args.get("blob"):
                await blobs.delete(await blobs.transfers(gw.bus), args["blob"])
            raise
        return gw.render(reply)

    async def console(request: web.Request) -> web.Response:
        if request.method == "POST":  # interactive: a websocket operation
            body = await read_json(request)
            if not isinstance(body, dict):
                raise BadRequest("Invalid request body: expected a JSON object")
            return gw.render(await gw.ask(SVC, "console_attach",
                                          ExecRequest(**common(request), body=body)))
        if request.method == "DELETE":
            return gw.render(await gw.ask(SVC, "console_clear", LogRequest(**common(request))))
        meta = (await gw.ask(SVC, "console_get", LogRequest(**common(request)))).metadata
        return _raw(await unpack(gw.bus, meta.get("data"), meta.get("blob")))

    async def logs(request: web.Request) -> web.Response:
        return gw.render(await gw.ask(SVC, "log_list", LogRequest(**common(request))))

    async def log(request: web.Request) -> web.Response:
        req = LogRequest(**common(request), file=request.match_info["file"])
        if request.method == "DELETE":
            return gw.render(await gw.ask(SVC, "log_delete", req))
        meta = (await gw.ask(SVC, "log_get", req)).metadata
        return _raw(await unpack(gw.bus, meta.get("data"), meta.get("blob")))

    for base in BASES:
        item = base + "/{name}"
        r.add_post(item + "/exec", exec_)
        for method in ("GET", "HEAD", "POST", "DELETE"):
            r.add_route(method, item + "/files", files)
        r.add_get(item + "/console", console, allow_head=False)
        r.add_delete(item + "/console", console)
        r.add_post(item + "/console", console)
        r.add_get(item + "/logs", logs, allow_head=False)
        r.add_get(item + "/logs/{file}", log, allow_head=False)
        r.add_delete(item + "/logs/{file}", log)
