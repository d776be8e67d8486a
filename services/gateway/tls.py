"""The gateway's HTTPS side: its server certificate, the TLS context, the listener.

LXD's remote API is TLS with client certificates: the server presents a self-signed
certificate made on first start, and a client is whoever holds the key of the certificate
it presents; whether that client is *trusted* is decided per request against the trust
store (``trust.py``), not by the TLS layer. So the listener must ask for a client
certificate and accept any, trusted or not: an untrusted client still reaches ``GET /1.0``
(to learn it is untrusted) and ``POST /1.0/certificates`` (to become trusted with a token
or the trust password). Python's ``ssl`` has no switch for "request a certificate, do not
verify it" (``CERT_OPTIONAL`` verifies against a CA store and fails the handshake for a
self-signed client certificate), so :func:`server_context` installs an OpenSSL verify
callback that accepts every chain: the one ctypes call in the gateway, checked against the
context it patches before use.

Fingerprints are LXD's: the SHA-256 of the certificate's DER bytes, in lowercase hex.
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from aiohttp import web

from shared.errors import BadRequest
from shared.log import get_logger

log = get_logger(component="gateway")

CERT_FILE = "server.crt"
KEY_FILE = "server.key"
DEFAULT_PORT = 8443  # LXD's port when core.https_address names no port
CERT_DAYS = 3650  # LXD's server certificates last ten years


# -- certificates -------------------------------------------------------------------------

def fingerprint(der: bytes) -> str:
    """LXD's certificate fingerprint: SHA-256 of the DER encoding, lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def pem_to_der(pem: str | bytes) -> bytes:
    """The DER bytes of a PEM certificate (400 when it is not one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise BadRequest(f"Invalid certificate material: {exc}") from None
    return cert.public_bytes(Encoding.DER)


def der_to_pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def parse_der(der: bytes):  # -> x509.Certificate (imported lazily: a heavy import)
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise BadRequest(f"Invalid certificate material: {exc}") from None


def ensure_server_certificate(directory: Path) -> tuple[Path, Path]:
    """``server.crt`` and ``server.key`` in ``directory``, made on first use (as LXD makes
    its own on first start): ECDSA P-384, self-signed, valid for the host name, 127.0.0.1
    and ::1. The key is 0600. Returns (certificate path, key path)."""
    crt, key = directory / CERT_FILE, directory / KEY_FILE
    if crt.exists() and key.exists():
        return crt, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = socket.gethostname() or "localhost"
    private = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"root@{host}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # The stock client pins this certificate and checks the name against its first
            # DNS name, so the host name must come first.
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(host),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .sign(private, hashes.SHA384()))
    directory.mkdir(parents=True, exist_ok=True)
    tmp_key = key.with_suffix(".key.tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.replace(tmp_key, key)
    tmp_crt = crt.with_suffix(".crt.tmp")
    tmp_crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_crt, crt)
    log.info("server certificate created", path=str(crt))
    return crt, key


# -- the TLS context ----------------------------------------------------------------------

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VERIFY_CB
def _accept_any(_preverify_ok: int, _store: int) -> int:
    return 1  # trust is decided per request from the certificate's fingerprint


def _libssl() -> ctypes.CDLL:
    # The symbols of the libssl the ssl module itself uses: through the extension module,
    # or, when _ssl is built into the interpreter, through the process's own symbols.
    lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
    lib.SSL_CTX_set_verify.restype = None
    return lib


def _accept_any_client_certificate(ctx: ssl.SSLContext) -> None:
    """Ask for a client certificate and accept any (see the module docstring)."""
    ctx.verify_mode = ssl.CERT_OPTIONAL
    lib = _libssl()
    # CPython's SSLContext object is PyObject_HEAD followed by its SSL_CTX pointer.
    raw = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    ssl_verify_peer = 0x01
    if not raw or lib.SSL_CTX_get_verify_mode(raw) != ssl_verify_peer:
        raise RuntimeError("cannot reach the OpenSSL context of this Python's ssl module")
    lib.SSL_CTX_set_verify(raw, ssl_verify_peer, _accept_any)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ with the server certificate, requesting (not requiring) a client one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    _accept_any_client_certificate(ctx)
    return ctx


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER certificate the client presented on this connection, if any (None on the
    unix socket and for a TLS client without a certificate)."""
    transport = request.transport
    if transport is None:
        return None
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    return obj.getpeercert(binary_form=True)


def is_tls(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


# -- addresses ----------------------------------------------------------------------------

def parse_address(address: str) -> tuple[str | None, int]:
    """``core.https_address`` as LXD reads it: ``host``, ``host:port``, ``:port``,
    ``[v6]:port``; no port means 8443, no host means every address. 400 if malformed."""
    value = address.strip()
    if not value:
        raise BadRequest("Invalid core.https_address: empty")
    host, port = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise BadRequest(f"Invalid core.https_address {address!r}: unclosed '['")
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadRequest(f"Invalid core.https_address {address!r}")
        port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif value.count(":") > 1:  # a bare IPv6 address
        host = value
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise BadRequest(f"Invalid core.https_address {address!r}: port {port!r} is not a "
                         "number") from None
    if not 0 < number < 65536:
        raise BadRequest(f"Invalid core.https_address {address!r}: port out of range")
    if host in ("", "0.0.0.0", "::"):
        return None, number
    return host, number


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_addresses(address: str) -> list[str]:
    """The addresses a client may use (LXD's ``util.ListenAddresses``): a wildcard listener
    lists every global address of the host's interfaces."""
    if not address:
        return []
    host, port = parse_address(address)
    if host is not None:
        return [_join(host, port)]
    out: list[str] = []
    with contextlib.suppress(Exception):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                ip = msg.get_attr("IFA_ADDRESS")
                if not ip:
                    continue
                addr = ipaddress.ip_address(ip)
                if addr.is_loopback or addr.is_link_local:
                    continue
                out.append(_join(ip, port))
    return out or [_join("127.0.0.1", port)]


class HttpsListener:
    """The TLS site of the gateway's aiohttp app (a second site beside the unix socket):
    bound, rebound or closed to follow ``core.https_address``."""

    def __init__(self, runner: web.AppRunner, context: ssl.SSLContext) -> None:
        self.runner = runner
        self.context = context
        self.address = ""
        self._site: web.TCPSite | None = None

    async def apply(self, address: str) -> None:
        """Listen on ``address`` ("" = stop). A bind failure is a 400 and leaves the
        previous listener as it was."""
        address = address.strip()
        if address == self.address:
            return
        if not address:
            await self.close()
            return
        host, port = parse_address(address)
        site = web.TCPSite(self.runner, host, port, ssl_context=self.context,
                           reuse_address=True)
        old = self._site
        if old is not None and self._same_port(address):
            await old.stop()  # rebinding the very port: free it first
            old = None
        try:
            await site.start()
        except OSError as exc:
            if old is None and self._site is not None:  # we closed it: try to restore
                with contextlib.suppress(OSError):
                    restore = web.TCPSite(self.runner, *parse_address(self.address),
                                          ssl_context=self.context, reuse_address=True)
                    await restore.start()
                    self._site = restore
            raise BadRequest(f"Cannot listen on {address!r}: {exc.strerror or exc}") from None
        if old is not None:
            await old.stop()
        self._site, self.address = site, address
        log.info("https listening", address=address)

    def _same_port(self, address: str) -> bool:
        return bool(self.address) and parse_address(self.address)[1] == \
            parse_address(address)[1]

    async def close(self) -> None:
        if self._site is not None:
            await self._site.stop()
            log.info("https stopped", address=self.address)
        self._site, self.address = None, ""
