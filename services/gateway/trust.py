"""Who a request comes from, and what it may do: LXD's trust model.

- On the unix socket the client is root (or the socket's group): trusted, unrestricted.
- Over HTTPS the client is the certificate it presented. Its fingerprint (SHA-256 of the
  DER) found in the trust store (KV ``certificates``, shared by every gateway) makes it
  trusted; a certificate marked ``restricted`` reaches only the projects it lists (Corral
  has only ``default``, so a restricted certificate must list ``default`` to touch
  anything) and none of the server-wide settings.
- Anyone else is *untrusted*: ``GET /1.0`` answers LXD's untrusted view, ``POST
  /1.0/certificates`` lets it become trusted (a trust token, or ``core.trust_password``),
  public images stay readable; everything else is 403.

Trust tokens are LXD's: ``POST /1.0/certificates {"token": true, "name": ...}`` starts an
operation of class ``token`` that stays running until it is used once, cancelled or expires
(``core.remote_token_expiry``); the token the client shows is base64 of JSON carrying the
client name, the server certificate's fingerprint, its addresses and the operation's secret.
The client presents it as ``password`` (``lxc remote add NAME TOKEN``) or as
``trust_token`` (the ``explicit_trust_token`` extension, pylxd).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shared import api
from shared.errors import BadRequest, Conflict, CorralError, Forbidden, NotFound
from shared.models import Requestor

from . import responses, tls
from .request import json_object, recursion_of

if TYPE_CHECKING:
    from .routing import Context

BUCKET = "certificates"
TYPES = ("client", "metrics", "server")
NOT_AUTHORIZED = "not authorized"


@dataclass(frozen=True)
class Identity:
    protocol: str  # "unix" or "tls"
    trusted: bool
    fingerprint: str = ""
    name: str = ""
    restricted: bool = False
    projects: tuple[str, ...] = field(default_factory=tuple)
    address: str = "@"
    metrics: bool = False  # a certificate of type "metrics": GET /1.0/metrics only

    @property
    def admin(self) -> bool:
        """Trusted and unrestricted: may change the server and the trust store."""
        return self.trusted and not self.restricted

    def requestor(self) -> Requestor:
        if self.protocol == "unix":
            return Requestor()
        return Requestor(username=self.fingerprint, protocol="tls", address=self.address)


ROOT = Identity(protocol="unix", trusted=True, name="root")

# What an untrusted client may reach: (method, route as the table names it).
UNTRUSTED = {("GET", "/"), ("GET", "/1.0"), ("GET", "/1.0/"), ("HEAD", "/1.0"),
             ("POST", "/1.0/certificates"), ("GET", "/1.0/images/{name}"),
             # a websocket's secret is its credential, as LXD's (another server's migration)
             ("GET", "/1.0/operations/{id}/websocket"),
             ("HEAD", "/1.0/images/{name}"), ("GET", "/1.0/images/{name}/export"),
             ("GET", "/1.0/images"), ("GET", "/1.0/images/aliases/{name}"),
             # the simplestreams tree of the public images (routes/image_serve.py)
             ("GET", "/streams/v1/index.json"), ("HEAD", "/streams/v1/index.json"),
             ("GET", "/streams/v1/images.json"), ("HEAD", "/streams/v1/images.json"),
             ("GET", "/images/{fingerprint}/{file}"), ("HEAD", "/images/{fingerprint}/{file}")}
# Image reads an untrusted client may make of a public image, or of a private one with its
# secret (``?secret=``): the read each route is, as the image service counts a secret's uses.
PUBLIC_IMAGE_ROUTES = {"/1.0/images/{name}": "info", "/1.0/images/{name}/export": "export"}


def check_access(identity: Identity, method: str, route: str, project: str,
                 all_projects: bool) -> None:
    """Raise 403 unless ``identity`` may call ``method route`` in ``project``.

    Pure policy (the trust store lookup happened before); handlers check what depends on
    the object (a restricted client may only change its own certificate).
    """
    if identity.admin:
        return
    if not identity.trusted:
        if identity.metrics and (method, route) == ("GET", "/1.0/metrics"):
            return  # its projects are filtered there (routes/metrics.py)
        if (method, route) not in UNTRUSTED:
            raise Forbidden(NOT_AUTHORIZED)
        return
    # restricted
    if route in ("/1.0", "/1.0/") and method not in ("GET", "HEAD"):
        raise Forbidden("Restricted certificates cannot change the server configuration")
    if route.startswith("/1.0/storage-pools") and method not in ("GET", "HEAD"):
        raise Forbidden("Restricted certificates cannot change storage pools")
    if route.startswith("/1.0/projects") and method not in ("GET", "HEAD"):
        raise Forbidden("Restricted certificates cannot change projects")
    if route.startswith("/1.0/certificates") or route in ("/", "/1.0", "/1.0/"):
        return  # handlers check what a restricted client may do there
    if all_projects:
        raise Forbidden("Restricted certificates cannot list all projects")
    if project not in identity.projects:
        raise Forbidden(f"Certificate is restricted and not allowed in project {project!r}")


# -- tokens -------------------------------------------------------------------------------

def encode_token(client_name: str, fingerprint: str, addresses: list[str], secret: str,
                 expires_at: str = "0001-01-01T00:00:00Z") -> str:
    """LXD's certificate add token (``api.CertificateAddToken.String()``)."""
    doc = {"client_name": client_name, "fingerprint": fingerprint, "addresses": addresses,
           "secret": secret, "expires_at": expires_at}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_token(text: str) -> dict[str, Any] | None:
    """The token's fields, or None when ``text`` is not a token (then it is a password)."""
    try:
        doc = json.loads(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    for key in ("client_name", "fingerprint", "secret"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            return None
    if not isinstance(doc.get("addresses"), list) or not doc["addresses"]:
        return None
    return doc


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _parse_rfc3339(value: str) -> float:
    head, _, frac = value.rstrip("Z").partition(".")
    ts = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return ts.timestamp() + (float("0." + frac[:6]) if frac else 0.0)


# -- certificates -------------------------------------------------------------------------

def certificate_record(der: bytes, name: str, type_: str, restricted: bool,
                       projects: list[str]) -> dict[str, Any]:
    """LXD's certificate object (``api.Certificate``)."""
    return {"name": name, "type": type_, "restricted": restricted, "projects": projects,
            "certificate": tls.der_to_pem(der), "fingerprint": tls.fingerprint(der)}


def _cert_etag(rec: dict[str, Any]) -> str:
    return api.etag(rec["name"], rec["type"], rec["restricted"], rec["projects"],
                    rec["certificate"])


def _projects(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise BadRequest("Invalid projects: expected a list of project names")
    return list(value)


def _type(value: Any) -> str:
    if value in (None, ""):
        return "client"
    if value not in TYPES:
        raise BadRequest(f"Invalid certificate type {value!r}: expected one of "
                         f"{', '.join(TYPES)}")
    return str(value)


def _b64_der(value: str) -> bytes:
    """The body's ``certificate``: base64 of the DER (LXD); a PEM is accepted too."""
    if "BEGIN CERTIFICATE" in value:
        return tls.pem_to_der(value)
    try:
        der = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid certificate: expected base64 of the DER certificate"
                         ) from None
    tls.parse_der(der)
    return der


class TrustStore:
    """The trusted certificates (KV ``certificates``) and the certificate routes' logic."""

    def __init__(self, remote: Any) -> None:  # the RemoteAPI (remote.py imports us)
        self.remote = remote

    @property
    def certs(self) -> dict[str, dict[str, Any]]:
        return self.remote.certificates.values

    def identify(self, request: web.Request) -> Identity:
        if not tls.is_tls(request):
            return ROOT
        peer = request.transport.get_extra_info("peername") if request.transport else None
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        der = tls.peer_certificate(request)
        if not der:
            return Identity(protocol="tls", trusted=False, address=address)
        fp = tls.fingerprint(der)
        rec = self.certs.get(fp)
        if rec is not None and rec.get("type") == "metrics":
            return Identity(protocol="tls", trusted=False, fingerprint=fp, name=rec["name"],
                            restricted=bool(rec.get("restricted")),
                            projects=tuple(rec.get("projects") or ()), address=address,
                            metrics=True)
        if rec is None or rec.get("type", "client") != "client":
            return Identity(protocol="tls", trusted=False, fingerprint=fp, address=address)
        return Identity(protocol="tls", trusted=True, fingerprint=fp, name=rec["name"],
                        restricted=bool(rec.get("restricted")),
                        projects=tuple(rec.get("projects") or ()), address=address)

    def find(self, prefix: str) -> dict[str, Any]:
        """A certificate by fingerprint or unique prefix (LXD's lookup)."""
        matches = [fp for fp in self.certs if fp.startswith(prefix.lower())] if prefix else []
        if not matches:
            raise NotFound("Certificate not found")
        if len(matches) > 1:
            raise BadRequest(f"More than one certificate matches {prefix!r}")
        return self.certs[matches[0]]

    async def add(self, rec: dict[str, Any]) -> None:
        self.remote.require_ready()
        if rec["fingerprint"] in self.certs:
            raise Conflict("Certificate already in trust store")
        rev = await self.remote.certificates.store.create(rec["fingerprint"], rec,
                                                          "Certificate")
        self.remote.certificates.remember(rec["fingerprint"], rec, rev)

    async def replace(self, old_fp: str, rec: dict[str, Any]) -> None:
        self.remote.require_ready()
        store = self.remote.certificates.store
        if rec["fingerprint"] != old_fp:
            await self.add(rec)
            await store.delete(old_fp)
            self.remote.certificates.remember(old_fp, None, 0)
            return
        rev = await store.put(old_fp, rec)
        self.remote.certificates.remember(old_fp, rec, rev)

    async def remove(self, fp: str) -> None:
        self.remote.require_ready()
        await self.remote.certificates.store.delete(fp)
        self.remote.certificates.remember(fp, None, 0)


def identity_of(request: web.Request) -> Identity:
    return request.get("corral.identity", ROOT)


async def _lifecycle(ctx: "Context", action: str, fp: str, request: web.Request) -> None:
    try:
        await ctx.ops.events.lifecycle(action, f"/1.0/certificates/{fp}",
                                       requestor=identity_of(request).requestor())
    except Exception:  # an event lost is no reason to fail the change
        pass


# -- routes -------------------------------------------------------------------------------

async def certificates_list(ctx: "Context", request: web.Request) -> web.Response:
    recs = sorted(ctx.remote.trust.certs.values(), key=lambda r: r["fingerprint"])
    if recursion_of(request) > 0:
        return responses.sync(recs)
    return responses.sync([f"/1.0/certificates/{r['fingerprint']}" for r in recs])


async def certificate_get(ctx: "Context", request: web.Request) -> web.Response:
    rec = ctx.remote.trust.find(request.match_info["fingerprint"])
    return responses.sync(rec, etag=_cert_etag(rec))


async def certificates_create(ctx: "Context", request: web.Request) -> web.Response:
    """``POST /1.0/certificates``: add a certificate (admin), issue a token (admin), or
    let an untrusted client in with a token or the trust password."""
    remote = ctx.remote
    body = await json_object(request)
    who = identity_of(request)
    want_token = body.get("token") is True
    cert_text = body.get("certificate") or ""
    if not isinstance(cert_text, str):
        raise BadRequest("Invalid certificate: expected base64 of the DER certificate")
    if want_token and cert_text:
        raise BadRequest("Can't use certificate if token is requested")
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise BadRequest("Invalid name: expected a string")
    type_ = _type(body.get("type"))
    restricted = body.get("restricted") is True
    projects = _projects(body.get("projects"))
    if want_token:
        if type_ != "client":
            raise BadRequest("Tokens can only be issued for client certificates")
        if not remote.listener_address:
            raise BadRequest("Can't issue token when server isn't listening on network "
                             "(set core.https_address first)")
    if who.trusted and not cert_text and not want_token:
        raise BadRequest("Client is already trusted")
    if not who.admin:
        if want_token:
            raise Forbidden(NOT_AUTHORIZED)
        secret = body.get("trust_token") or body.get("password") or ""
        if not isinstance(secret, str) or not secret:
            raise Forbidden(NOT_AUTHORIZED)
        token = decode_token(secret)
        if token is not None:
            op = await _use_token(ctx, token)
            req = (op.get("metadata") or {}).get("request") or {}
            name, type_ = req.get("name", ""), _type(req.get("type"))
            restricted = bool(req.get("restricted"))
            projects = _projects(req.get("projects"))
            cert_text = ""  # the token admits the certificate on this connection only
        elif not remote.check_trust_password(secret):
            raise Forbidden(NOT_AUTHORIZED)
    if want_token:
        return await _issue_token(ctx, name, restricted, projects)
    if cert_text:
        der = _b64_der(cert_text)
    elif tls.is_tls(request):
        peer = tls.peer_certificate(request)
        if not peer:
            raise BadRequest("No client certificate provided")
        der = peer
    else:
        raise BadRequest("Can't use TLS data on non-TLS link")
    cert = tls.parse_der(der)
    if not name:
        from cryptography.x509.oid import NameOID

        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else who.address.rsplit(":", 1)[0]
    rec = certificate_record(der, name, type_, restricted, projects)
    await remote.trust.add(rec)
    await _lifecycle(ctx, "certificate-created", rec["fingerprint"], request)
    resp = responses.sync(None, status=201)
    resp.headers["Location"] = f"/1.0/certificates/{rec['fingerprint']}"
    return resp


async def _issue_token(ctx: "Context", name: str, restricted: bool, projects: list[str]
                       ) -> web.Response:
    remote = ctx.remote
    if not name:
        raise BadRequest("A token needs the client's name")
    meta: dict[str, Any] = {
        "secret": secrets.token_hex(32),
        "fingerprint": remote.server_fingerprint,
        "addresses": tls.listen_addresses(remote.listener_address),
        "request": {"name": name, "type": "client", "restricted": restricted,
                    "projects": projects, "certificate": "", "password": "",
                    "token": True},
    }
    life = remote.token_expiry()
    if life:
        meta["expiresAt"] = _rfc3339(time.time() + life)

    async def pending(_handle: Any) -> None:
        if life:
            await asyncio.sleep(life)
            raise CorralError("Token has expired", 403)
        await asyncio.Event().wait()  # until used (cancelled) or revoked

    op = await ctx.ops.start("Certificate add token", pending, cls="token", may_cancel=True,
                             metadata=meta)
    return responses.async_(op.lxd())


async def _use_token(ctx: "Context", token: dict[str, Any]) -> dict[str, Any]:
    """The running token operation with this secret, cancelled now (single use); 403 if
    none (used, revoked, expired or never issued)."""
    for op in await ctx.ops.list(None):
        md = op.get("metadata") or {}
        if op.get("class") != "token" or op.get("status") != "Running" or \
                not isinstance(md.get("secret"), str):
            continue
        if not hmac.compare_digest(md["secret"].encode(), str(token["secret"]).encode()):
            continue
        try:
            await ctx.ops.cancel(op["id"])
        except CorralError:  # someone else used it a moment ago
            break
        expires = md.get("expiresAt")
        if isinstance(expires, str) and _parse_rfc3339(expires) < time.time():
            raise Forbidden("Token has expired")
        return op
    raise Forbidden("No matching certificate add operation found")


async def _update(ctx: "Context", request: web.Request, replace: bool) -> web.Response:
    trust = ctx.remote.trust
    rec = trust.find(request.match_info["fingerprint"])
    who = identity_of(request)
    body = await json_object(request)
    etag = request.headers.get("If-Match")
    api.check_etag(etag, _cert_etag(rec))
    new = dict(rec)
    if replace:
        new.update(name=body.get("name") or "", type=_type(body.get("type")),
                   restricted=body.get("restricted") is True,
                   projects=_projects(body.get("projects")))
    else:
        if "name" in body:
            new["name"] = body["name"] or ""
        if "type" in body:
            new["type"] = _type(body["type"])
        if "restricted" in body:
            if not isinstance(body["restricted"], bool):
                raise BadRequest("Invalid restricted: expected true or false")
            new["restricted"] = body["restricted"]
        if "projects" in body:
            new["projects"] = _projects(body["projects"])
    if not isinstance(new["name"], str):
        raise BadRequest("Invalid name: expected a string")
    if body.get("certificate"):
        der = _b64_der(body["certificate"])
        new.update(certificate=tls.der_to_pem(der), fingerprint=tls.fingerprint(der))
    if not who.admin:
        if who.fingerprint != rec["fingerprint"]:
            raise Forbidden(NOT_AUTHORIZED)
        if any(new[k] != rec[k] for k in ("name", "type", "restricted", "projects")):
            raise Forbidden("A restricted certificate may only replace its own certificate")
    await trust.replace(rec["fingerprint"], new)
    await _lifecycle(ctx, "certificate-updated", new["fingerprint"], request)
    return responses.sync(None)


async def certificate_put(ctx: "Context", request: web.Request) -> web.Response:
    return await _update(ctx, request, replace=True)


async def certificate_patch(ctx: "Context", request: web.Request) -> web.Response:
    return await _update(ctx, request, replace=False)


async def certificate_delete(ctx: "Context", request: web.Request) -> web.Response:
    trust = ctx.remote.trust
    rec = trust.find(request.match_info["fingerprint"])
    who = identity_of(request)
    if not who.admin and who.fingerprint != rec["fingerprint"]:
        raise Forbidden(NOT_AUTHORIZED)
    await trust.remove(rec["fingerprint"])
    await _lifecycle(ctx, "certificate-deleted", rec["fingerprint"], request)
    return responses.sync(None)
