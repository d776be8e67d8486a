"""``corral remote``: the image servers and Corral/LXD servers this client knows
(``remote add NAME URL --protocol simplestreams|lxd|oci``), used as ``NAME:`` in
``corral launch NAME:ALIAS``, ``corral image list NAME:`` and ``corral image copy``.

Kept in ``$CORRAL_CONF/remotes.json`` (see ``services/cli/remotes.py``). An HTTPS server
whose certificate the system CAs do not vouch for (a self-signed one, as every LXD and
Corral has) is pinned: its fingerprint is shown, and it is kept once the user accepts it
(``--accept-certificate``, or "y" at the prompt), as ``lxc remote add`` does.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Any

from ..client import UsageError
from ..output import add_format, emit
from ..parsing import command, group


def add(args: Namespace) -> None:
    from .. import remotes as rm

    rm.check_name(args.name)
    url = rm.normalize_url(args.url, args.protocol)
    known = rm.load()
    if args.name in known:
        raise UsageError(f"Remote {args.name!r} already exists (remove it first, or rename)")
    if bool(args.user) != bool(args.password):
        raise UsageError("--user and --password go together (basic auth of an oci registry)")
    if args.user and args.protocol != "oci":
        raise UsageError("--user/--password are for oci registries only")
    certificate = ""
    if url.startswith("https://") and not rm.trusted_by_system(url):
        certificate = rm.server_certificate(url)
        fp = rm.fingerprint(certificate)
        if not args.accept_certificate:
            if not sys.stdin.isatty():
                raise UsageError(f"The certificate of {url} is not trusted by this system "
                                 f"(fingerprint {fp}); check it and add the remote with "
                                 "--accept-certificate to pin it")
            answer = input(f"Certificate fingerprint: {fp}\nok (y/n)? ").strip().lower()
            if answer not in ("y", "yes"):
                raise UsageError("Server certificate NACKed by user")
        print(f"Pinned the certificate of {url} (fingerprint {fp})")
    credentials = f"{args.user}:{args.password}" if args.user else ""
    known[args.name] = rm.Remote(args.name, url, args.protocol, certificate, credentials)
    rm.save(known)
    print(f"Remote {args.name} added ({args.protocol}, {url})")


def list_(args: Namespace) -> None:
    from .. import remotes as rm

    known = rm.load()
    rows: list[dict[str, Any]] = [{"name": f"{rm.LOCAL} (current)", "url": "unix://",
                                   "protocol": "lxd", "auth": "unix", "certificate": ""}]
    raw: list[dict[str, Any]] = [{"name": rm.LOCAL, "url": "unix://", "protocol": "lxd"}]
    for name, r in sorted(known.items()):
        fp = rm.fingerprint(r.certificate)[:12] if r.certificate else ""
        rows.append({"name": name, "url": r.url, "protocol": r.protocol,
                     "auth": "basic" if r.credentials else "none", "certificate": fp})
        raw.append({"name": name, "url": r.url, "protocol": r.protocol,
                    "certificate_fingerprint": rm.fingerprint(r.certificate)
                    if r.certificate else "", "basic_auth": bool(r.credentials)})
    emit(rows, ["name", "url", "protocol", "auth", "certificate"], args.fmt, raw=raw)


def remove(args: Namespace) -> None:
    from .. import remotes as rm

    if args.name == rm.LOCAL:
        raise UsageError(f"Remote {rm.LOCAL!r} is this server and cannot be removed")
    known = rm.load()
    if args.name not in known:
        raise UsageError(f"Unknown remote {args.name!r}")
    del known[args.name]
    rm.save(known)
    print(f"Remote {args.name} removed")


def rename(args: Namespace) -> None:
    from .. import remotes as rm

    if args.old == rm.LOCAL:
        raise UsageError(f"Remote {rm.LOCAL!r} is this server and cannot be renamed")
    rm.check_name(args.new)
    known = rm.load()
    if args.old not in known:
        raise UsageError(f"Unknown remote {args.old!r}")
    if args.new in known:
        raise UsageError(f"Remote {args.new!r} already exists")
    r = known.pop(args.old)
    r.name = args.new
    known[args.new] = r
    rm.save(known)
    print(f"Remote {args.old} renamed to {args.new}")


def register(sub: Any) -> None:
    remotes = group(sub, "remote")
    p = command(remotes, "add", add, "Add an image server or Corral/LXD server.",
                "Add a remote: a simplestreams image server, a Corral or LXD server (its "
                "public images), or an OCI registry. A certificate the system does not "
                "trust is shown and pinned once accepted.")
    p.add_argument("name")
    p.add_argument("url", help="https://HOST[:PORT]")
    p.add_argument("--protocol", default="lxd", choices=("simplestreams", "lxd", "oci"),
                   help="default: lxd")
    p.add_argument("--accept-certificate", action="store_true",
                   help="pin the server's certificate without asking")
    p.add_argument("--user", default="", help="oci: registry user (basic auth)")
    p.add_argument("--password", default="", help="oci: registry password")
    p = command(remotes, "list", list_, "List the remotes.")
    add_format(p)
    p = command(remotes, "remove", remove, "Remove a remote.")
    p.add_argument("name")
    p = command(remotes, "rename", rename, "Rename a remote.")
    p.add_argument("old")
    p.add_argument("new")
