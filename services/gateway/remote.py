"""The gateway's remote API: server config, the HTTPS listener, the trust store, the socket.

One object per gateway ties them together: it mirrors the ``server_config`` and
``certificates`` buckets (``kvmirror.py``), follows ``core.https_address`` with the TLS site
(``tls.py``) and ``core.socket_group`` with the unix socket's group, identifies each request
and applies LXD's access rules (``trust.py``) in a middleware. ``PUT``/``PATCH /1.0`` are
here: the gateway that takes the change applies it first (a port that cannot be bound is a
400 and nothing is stored), then stores it; the others apply it when their mirror sees it.

The unix socket is root's (0660 root:root, like LXD's without ``--group``). To let a group
in, set ``core.socket_group`` (server config, applied at once by every gateway) or
``CORRAL_SOCKET_GROUP`` in the gateway's environment (read at start; the key wins).
"""

from __future__ import annotations

import contextlib
import grp
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from shared.errors import BadRequest, CorralError, NotFound, Unavailable
from shared.log import get_logger
from shared.messages.image import SecretRequest
from shared.models import ObjectRequest

from . import projects, responses, server_config, tls, trust
from .kvmirror import KVMirror
from .request import all_projects, project_of, read_json
from .routing import listing

if TYPE_CHECKING:
    from .routing import Context

log = get_logger(component="gateway")

# API extensions of the remote API (added to GET /1.0's list).
EXTENSIONS = ["certificate_update", "certificate_token", "explicit_trust_token",
              "certificate_project", "kernel_features", "lxc_features"]
SOCKET_GROUP_ENV = "CORRAL_SOCKET_GROUP"


class RemoteAPI:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.config = KVMirror(ctx.bus, server_config.BUCKET, "Corral server config",
                               self._config_changed)
        self.certificates = KVMirror(ctx.bus, trust.BUCKET, "Corral trusted certificates")
        self.trust = trust.TrustStore(self)
        self.listener: tls.HttpsListener | None = None
        self.ready = False  # the buckets are open (else config and trust writes are 503)
        self.cert_path, self.key_path = tls.ensure_server_certificate(ctx.config.dir)
        self.server_certificate = self.cert_path.read_text()
        self.server_fingerprint = tls.fingerprint(tls.pem_to_der(self.server_certificate))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, runner: web.AppRunner) -> None:
        self.listener = tls.HttpsListener(runner, tls.server_context(self.cert_path,
                                                                     self.key_path))
        try:
            await self.certificates.open()
            await self.config.open()
        except Exception as exc:  # no bucket: the unix socket must still be served
            log.error("remote API disabled: its KV buckets cannot be opened", error=str(exc))
            return
        self.ready = True
        self.apply_socket_group()
        try:
            await self.listener.apply(self.stored.get("core.https_address", ""))
        except BadRequest as exc:  # the port is taken: serve the socket all the same
            log.error("https listener not started", error=exc.message)

    async def stop(self) -> None:
        await self.config.close()
        await self.certificates.close()
        if self.listener:
            await self.listener.close()

    # -- config -----------------------------------------------------------------------------

    @property
    def stored(self) -> dict[str, str]:
        return dict((self.config.values.get(server_config.ENTRY) or {}).get("config", {}))

    @property
    def listener_address(self) -> str:
        return self.listener.address if self.listener else ""

    def check_trust_password(self, password: str) -> bool:
        return server_config.check_password(self.stored.get("core.trust_password", ""),
                                            password)

    def token_expiry(self) -> int:
        value = self.stored.get("core.remote_token_expiry", "")
        return server_config.expiry_seconds(value) if value else 0

    async def _config_changed(self, _key: str, value: dict[str, Any] | None) -> None:
        """Another gateway (or this one earlier) changed the config: follow it."""
        stored = (value or {}).get("config", {})
        self.apply_socket_group(stored)
        if self.listener:
            await self.listener.apply(stored.get("core.https_address", ""))

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable("The server config and trust store are unavailable: this "
                              "gateway could not open its KV buckets (server_config, "
                              "certificates); see its log (bus permissions?)")

    async def update(self, body: Any, replace: bool, etag: str | None) -> None:
        self.require_ready()
        found = await self.config.store.get(server_config.ENTRY)
        current, revision = (dict(found[0].get("config", {})), found[1]) if found else ({}, 0)
        if etag and etag.strip('"') != server_config.etag(current):
            raise CorralError("ETag doesn't match: the server config changed since you read "
                              "it", 412)
        new = server_config.apply_changes(current, body, replace)
        if new == current:
            return
        if self.listener:  # bind first: a port that is taken changes nothing
            await self.listener.apply(new.get("core.https_address", ""))
        self.apply_socket_group(new)
        value = {"config": new}
        try:
            if revision:
                rev = await self.config.store.update(server_config.ENTRY, value, revision)
            else:
                rev = await self.config.store.create(server_config.ENTRY, value,
                                                     "Server config")
        except CorralError:
            if self.listener:  # someone else changed it meanwhile: follow theirs
                with contextlib.suppress(CorralError):
                    await self.listener.apply(current.get("core.https_address", ""))
            self.apply_socket_group(current)
            raise
        self.config.remember(server_config.ENTRY, value, rev)

    def apply_socket_group(self, stored: dict[str, str] | None = None) -> None:
        """chown the unix socket to root:<group> (key, else environment, else root)."""
        stored = self.stored if stored is None else stored
        name = stored.get("core.socket_group") or os.environ.get(SOCKET_GROUP_ENV, "")
        path: Path = self.ctx.config.socket_path
        try:
            gid = int(name) if name.isdigit() else (grp.getgrnam(name).gr_gid if name else 0)
        except KeyError:
            log.error("socket group not found, socket stays root's", group=name)
            gid = 0
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_gid != gid:
                os.chown(path, 0, gid)
                log.info("unix socket group set", group=name or "root")

    # -- requests ---------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """Identify the client; refuse what it may not do (403) before any handler runs."""
        if request.match_info.http_exception is not None:
            return await handler(request)  # 404/405: no route, nothing to protect
        who = self.trust.identify(request)
        request["corral.identity"] = who
        resource = request.match_info.route.resource
        route = resource.canonical if resource else request.path
        trust.check_access(who, request.method, route, project_of(request),
                           all_projects(request))
        if route in trust.PUBLIC_IMAGE_ROUTES and request.query.get("secret"):
            # LXD spends a presented secret whoever holds it (a trusted puller too)
            if await self._secret_opens(request, trust.PUBLIC_IMAGE_ROUTES[route]) \
                    or who.trusted:
                return await handler(request)
            raise NotFound("Image not found")
        if not who.trusted and route == "/1.0/images":
            return await self._public_images(request)
        if not who.trusted and route == "/1.0/images/aliases/{name}":
            await self._require_public_alias(request)
        elif not who.trusted and route in trust.PUBLIC_IMAGE_ROUTES:
            await self._require_public_image(request)
        return await handler(request)

    async def _secret_opens(self, request: web.Request, use: str) -> bool:
        """Whether the image's secret (``?secret=``, from ``POST /1.0/images/<fp>/secret``)
        lets this request read it; the image service spends the read if so."""
        await projects.resolve(self.ctx.bus, request)  # the project the secret was made in
        req = SecretRequest(project=project_of(request), fingerprint=request.match_info[
            "name"], secret=request.query.get("secret", ""), check=True, use=use)
        reply = await self.ctx.ask("image", "secret", req)
        return bool((reply.metadata or {}).get("valid"))

    async def _public_images(self, request: web.Request) -> web.Response:
        """``GET /1.0/images`` for an untrusted client: the public images only (LXD)."""
        req = await listing(request)
        recursion = req.recursion
        req.recursion = 1
        reply = await self.ctx.ask("image", "list", req)
        public = [i for i in reply.metadata or [] if isinstance(i, dict) and i.get("public")]
        if recursion > 0:
            return responses.sync(public)
        return responses.sync([f"/1.0/images/{i['fingerprint']}" for i in public])

    async def _require_public_alias(self, request: web.Request) -> None:
        """An alias is visible to an untrusted client when its image is public."""
        req = ObjectRequest(project=project_of(request), name=request.match_info["name"])
        try:
            alias = (await self.ctx.ask("image", "alias_get", req)).metadata or {}
            target = alias.get("target", "")
            image = (await self.ctx.ask("image", "get", ObjectRequest(
                project=project_of(request), name=target))).metadata or {}
        except NotFound:
            raise NotFound("Image alias not found") from None
        if not target or not image.get("public"):
            raise NotFound("Image alias not found")

    async def _require_public_image(self, request: web.Request) -> None:
        """An untrusted client sees an image only if it is public and of the default
        project (LXD; 404 otherwise, so it learns nothing about private ones)."""
        if project_of(request) != "default":
            raise NotFound("Image not found")
        req = ObjectRequest(project=project_of(request), name=request.match_info["name"])
        try:
            reply = await self.ctx.ask("image", "get", req)
        except NotFound:
            raise NotFound("Image not found") from None
        if not (reply.metadata or {}).get("public"):
            raise NotFound("Image not found")

    def server_view(self, request: web.Request) -> dict[str, Any]:
        """What GET /1.0 adds for this client: auth, config, certificate, addresses."""
        who = trust.identity_of(request)
        return {
            "auth": "trusted" if who.trusted else "untrusted",
            "trusted": who.trusted,
            "config": server_config.render(self.stored) if who.admin else {},
            "etag": server_config.etag(self.stored),
            "certificate": self.server_certificate,
            "certificate_fingerprint": self.server_fingerprint,
            "addresses": tls.listen_addresses(self.listener_address),
        }


# -- routes -------------------------------------------------------------------------------

async def server_put(ctx: "Context", request: web.Request) -> web.Response:
    """``PUT /1.0``: the whole server config (keys not sent are removed)."""
    await ctx.remote.update(await read_json(request), True, request.headers.get("If-Match"))
    return responses.sync(None)


async def server_patch(ctx: "Context", request: web.Request) -> web.Response:
    """``PATCH /1.0``: the keys sent change, an empty value removes a key."""
    await ctx.remote.update(await read_json(request), False, request.headers.get("If-Match"))
    return responses.sync(None)
