"""``corral config trust add|list|remove|list-tokens|revoke-token`` and the server's own keys
(``corral config get|set|unset core.https_address ...``).

A server key is told from an instance name by its dot (LXD's instance names have none),
so ``corral config set core.https_address :8443`` changes the server while ``corral config
set c1 limits.memory 64MiB`` changes an instance, as ``lxc config set`` reads them.
Server keys change with ``PATCH /1.0`` (one key at a time, nothing else rewritten).
"""

from __future__ import annotations

import base64
import json
from argparse import Namespace
from typing import Any

from ..client import APIError, Client, from_args
from ..output import add_format, emit
from ..parsing import command, group


def is_server_key(word: str) -> bool:
    return "." in word or "=" in word


def server_get(c: Client, key: str) -> None:
    value = c.get("/1.0").get("config", {}).get(key, "")
    print("true" if value is True else value)


def server_set(c: Client, values: dict[str, str]) -> None:
    c.request("PATCH", "/1.0", {"config": values})


def server_unset(c: Client, key: str) -> None:
    if key not in c.get("/1.0").get("config", {}):
        raise APIError(f"Can't unset key {key!r}, it's not currently set")
    c.request("PATCH", "/1.0", {"config": {key: ""}})


def token_of(op: dict[str, Any]) -> str:
    """The token a client shows (LXD's ``CertificateAddToken`` as base64 JSON)."""
    md = op.get("metadata") or {}
    doc = {"client_name": (md.get("request") or {}).get("name", ""),
           "fingerprint": md.get("fingerprint", ""), "addresses": md.get("addresses", []),
           "secret": md.get("secret", ""), "expires_at": md.get("expiresAt")
           or "0001-01-01T00:00:00Z"}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def add(args: Namespace) -> None:
    c = from_args(args)
    body: dict[str, Any] = {"type": "client", "restricted": args.restricted,
                            "projects": [p for p in args.projects.split(",") if p]}
    if args.file:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            with open(args.file, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError) as exc:
            raise APIError(f"Cannot read a PEM certificate from {args.file}: {exc}") from None
        body["certificate"] = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
        body["name"] = args.name or args.file.rsplit("/", 1)[-1]
        c.request("POST", "/1.0/certificates", body)
        return
    if not args.name:
        raise APIError("A token needs the client's name: --name NAME")
    body.update(token=True, name=args.name)
    op = c.request("POST", "/1.0/certificates", body)["metadata"]
    if not args.quiet:
        print(f"Client {args.name} certificate add token:")
    print(token_of(op))


def list_(args: Namespace) -> None:
    items = from_args(args).get("/1.0/certificates", recursion=1)
    rows = [{"name": r["name"], "type": r["type"], "restricted": "YES" if r.get("restricted")
             else "NO", "projects": ",".join(r.get("projects") or []),
             "fingerprint": r["fingerprint"][:12]} for r in items]
    emit(rows, ["name", "type", "restricted", "projects", "fingerprint"], args.fmt,
         raw=items)


def remove(args: Namespace) -> None:
    from_args(args).request("DELETE", f"/1.0/certificates/{args.fingerprint}")


def tokens(c: Client) -> list[dict[str, Any]]:
    ops = c.get("/1.0/operations", recursion=1)
    return [op for op in ops.get("running", []) if op.get("class") == "token"]


def list_tokens(args: Namespace) -> None:
    items = tokens(from_args(args))
    rows = [{"name": (op.get("metadata") or {}).get("request", {}).get("name", ""),
             "token": token_of(op), "expires_at": (op.get("metadata") or {}).get(
                 "expiresAt", "")} for op in items]
    emit(rows, ["name", "token", "expires_at"], args.fmt, raw=items)


def revoke_token(args: Namespace) -> None:
    c = from_args(args)
    found = [op for op in tokens(c)
             if (op.get("metadata") or {}).get("request", {}).get("name") == args.name]
    if not found:
        raise APIError(f"No pending token for client {args.name!r}")
    for op in found:
        c.request("DELETE", f"/1.0/operations/{op['id']}")


def register(cfg: Any) -> None:
    """``trust`` under ``corral config`` (config.py calls this)."""
    tr = group(cfg, "trust", "Manage the clients trusted over HTTPS (core.https_address).")
    p = command(tr, "add", add, "Trust a certificate file, or (without one) print a one-time "
                "token for `lxc remote add NAME TOKEN`.")
    p.add_argument("file", nargs="?", metavar="CERT.crt")
    p.add_argument("--name", default="")
    p.add_argument("--restricted", action="store_true",
                   help="limit the client to --projects")
    p.add_argument("--projects", default="", help="comma-separated projects")
    p.add_argument("--quiet", "-q", action="store_true", help="print the token only")
    p = command(tr, "list", list_, "List trusted certificates.")
    add_format(p)
    p = command(tr, "remove", remove, "Stop trusting a certificate (by fingerprint or a "
                "unique prefix).")
    p.add_argument("fingerprint")
    p = command(tr, "list-tokens", list_tokens, "List pending trust tokens.")
    add_format(p)
    p = command(tr, "revoke-token", revoke_token, "Revoke the pending tokens of a client.")
    p.add_argument("name")
