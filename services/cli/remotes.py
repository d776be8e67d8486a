"""The remotes ``corral`` knows (``corral remote add``), where they are kept, and reading
image servers over HTTPS with a pinned certificate.

Kept per user in ``$CORRAL_CONF/remotes.json`` (default ``~/.config/corral``), mode 0600
in a 0700 directory: it may hold a registry's password and the servers' certificates.
One entry per remote: ``{"url", "protocol", "certificate" (PEM, "" = the system CAs),
"credentials" ("user:password" for an oci registry, else "")}``. ``local`` is always this
Corral (the unix socket) and cannot be added or removed.

Why pin by exact certificate rather than trusting the PEM as a CA: image servers and LXD
servers use self-signed leaf certificates (not CAs), which OpenSSL will not take as trust
anchors; LXD's client pins the same way (the server's certificate, compared as a whole).
The image service gets the same PEM as ``source.certificate`` with each pull.

Standard library only (imported by commands that need it), so ``corral --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .client import APIError, UsageError

PROTOCOLS = ("simplestreams", "lxd", "oci")
LOCAL = "local"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TIMEOUT = 30.0


@dataclass
class Remote:
    name: str
    url: str
    protocol: str
    certificate: str = ""
    credentials: str = ""

    def source(self, alias: str, image_type: str = "") -> dict[str, Any]:
        """LXD's pull source for ``alias`` on this remote (``POST /1.0/images`` and
        ``POST /1.0/instances``)."""
        src: dict[str, Any] = {"type": "image", "mode": "pull", "server": self.url,
                               "protocol": self.protocol, "alias": alias}
        if self.certificate:
            src["certificate"] = self.certificate
        if self.credentials:
            src["credentials"] = self.credentials
        if image_type:
            src["image_type"] = image_type
        return src


def conf_dir() -> Path:
    return Path(os.environ.get("CORRAL_CONF") or Path.home() / ".config" / "corral")


def conf_file() -> Path:
    return conf_dir() / "remotes.json"


def load() -> dict[str, Remote]:
    path = conf_file()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise APIError(f"Cannot read the remotes in {path}: {exc}") from None
    out = {}
    for name, entry in (doc.get("remotes") or {}).items():
        out[name] = Remote(name=name, url=entry["url"], protocol=entry["protocol"],
                           certificate=entry.get("certificate", ""),
                           credentials=entry.get("credentials", ""))
    return out


def save(remotes: dict[str, Remote]) -> None:
    """Written whole to a temp file (0600) then renamed: never half a file."""
    path = conf_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"remotes": {n: {k: v for k, v in asdict(r).items() if k != "name"}
                       for n, r in sorted(remotes.items())}}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def check_name(name: str) -> None:
    if not _NAME.match(name) or name == LOCAL:
        raise UsageError(f"Invalid remote name {name!r}: letters, digits, '-', '_', '.'; "
                         f"{LOCAL!r} is this server")


def normalize_url(url: str, protocol: str) -> str:
    """``https://host[:port][/path]`` without a trailing slash; plain http only for
    loopback (a tester's registry), never for a remote host."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"Invalid protocol {protocol!r}: use {', '.join(PROTOCOLS)}")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"Invalid remote URL {url!r}: expected https://HOST[:PORT]")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"Invalid remote URL {url!r}: image servers are reached over "
                         "https (plain http only on loopback)")
    return url.rstrip("/")


def get(name: str) -> Remote:
    remotes = load()
    if name not in remotes:
        known = ", ".join(sorted([LOCAL, *remotes]))
        raise UsageError(f"Unknown remote {name!r} (known: {known}); add it with `corral "
                         "remote add NAME URL --protocol simplestreams|lxd|oci`")
    return remotes[name]


def split(ref: str) -> tuple[Remote | None, str]:
    """``REMOTE:NAME`` -> (remote, name); a name without a colon, or ``local:NAME``, is
    local (None). Everything after the first colon is the name (an OCI ``alpine:3.20``)."""
    head, sep, tail = ref.partition(":")
    if not sep:
        return None, ref
    if head == LOCAL:
        return None, tail
    return get(head), tail


# -- certificates --------------------------------------------------------------------------

def fingerprint(pem: str) -> str:
    """sha256 of the DER, as ``lxc remote add`` shows it."""
    import ssl

    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def server_certificate(url: str) -> str:
    """The PEM the server presents (not verified: the user is shown its fingerprint)."""
    import socket
    import ssl

    host, port = _host_port(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise APIError(f"Cannot reach {url}: {exc}") from None
    if not der:
        raise APIError(f"{url} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der)


def trusted_by_system(url: str) -> bool:
    """Whether the server's certificate verifies against the system CAs (no pin needed)."""
    import socket
    import ssl

    host, port = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            with ssl.create_default_context().wrap_socket(raw, server_hostname=host):
                return True
    except ssl.SSLError:
        return False
    except OSError as exc:
        raise APIError(f"Cannot reach {url}: {exc}") from None


# -- reading a remote ----------------------------------------------------------------------

def http_get(remote: Remote, path: str, accept_json: bool = True) -> bytes:
    """GET ``remote.url + path``; the server's certificate must be the pinned one (or,
    without a pin, verify against the system CAs). 4xx/5xx raise with the server's error."""
    import http.client
    import ssl

    parts = urlsplit(remote.url + path)
    host, port = _host_port(remote.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        if remote.certificate:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # checked below: the exact pinned certificate
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, context=ctx, timeout=TIMEOUT)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.connect()
        if remote.certificate and parts.scheme == "https":
            der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            if not der or hashlib.sha256(der).hexdigest() != fingerprint(remote.certificate):
                raise APIError(f"The certificate of {remote.url} is not the one pinned for "
                               f"remote {remote.name!r}: remove and add the remote again "
                               "if the server's certificate really changed")
        conn.request("GET", target, headers={"Accept": "application/json"} if accept_json
                     else {})
        resp = conn.getresponse()
        body = resp.read()
    except ssl.SSLError as exc:
        raise APIError(f"TLS with {remote.url} failed ({exc.reason or exc}): add the remote "
                       "with --accept-certificate to pin its certificate") from None
    except OSError as exc:
        raise APIError(f"Cannot reach {remote.url}: {exc}") from None
    finally:
        conn.close()
    if resp.status >= 400:
        message = f"HTTP {resp.status}"
        try:
            message = json.loads(body).get("error") or message
        except (ValueError, AttributeError):
            pass
        raise APIError(f"{remote.url}{path}: {message}", resp.status)
    return body
