"""OCI images as LXD images: references, manifests, skopeo's errors, the image metadata.

Why this shape (Incus's model): an OCI image pulled from a distribution registry becomes
an ordinary LXD *split* image, so the image store, export, copy and the instance's
volume need nothing new. The metadata tarball holds ``metadata.yaml`` and the OCI
*runtime* config ``config.json`` (what ``umoci unpack`` derives from the image config:
``process.args`` = entrypoint + cmd, ``env``, ``cwd``, ``user`` resolved against the
image's /etc/passwd), which lands beside ``rootfs/`` in the instance's volume; the
container driver runs an instance whose volume has that file as an application
container. The fingerprint is the manifest's digest (hex): the registry's own name for
exactly these bytes.

Pure logic only (no processes): the fetcher (services/image/fetch_oci.py) runs skopeo
and umoci.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import yaml

from shared.errors import BadRequest, CorralError, Forbidden, NotFound, Unavailable

from .format import normalize_architecture

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# A repository path (distribution's grammar, simplified): lower-case components.
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                   r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Go's GOARCH names of the LXD architectures an index may offer.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
          "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Reference:
    """``host[:port]/repository`` plus a tag or a digest, as skopeo's ``docker://`` names."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    def transport(self, digest: str = "") -> str:
        """skopeo's name; with ``digest`` pinned to exactly that manifest."""
        pin = digest or self.digest
        return f"docker://{self.host}/{self.repository}" + (
            f"@{pin}" if pin else f":{self.tag or 'latest'}")

    @property
    def name(self) -> str:
        return f"{self.repository}@{self.digest}" if self.digest else \
            f"{self.repository}:{self.tag or 'latest'}"


def parse_reference(server: str, alias: str) -> Reference:
    """The image ``alias`` ("name:tag", "name", "name@sha256:...") on registry ``server``
    ("https://host:port"); 400 naming what is wrong."""
    m = re.match(r"^(?:https?://)?([^/\s]+)/?$", (server or "").strip())
    if not m:
        raise BadRequest(f"Invalid OCI registry address {server!r}: expected "
                         "https://host[:port]")
    if (server or "").startswith("http://"):
        raise BadRequest(f"OCI registry {server!r}: only https is supported (pass the "
                         "registry's certificate as source.certificate to pin it)")
    host = m.group(1)
    text = (alias or "").strip()
    if not text:
        raise BadRequest("No OCI image given: set source.alias to name:tag or "
                         "name@sha256:<digest>")
    repo, tag, digest = text, "", ""
    if "@" in text:
        repo, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise BadRequest(f"Invalid OCI digest {digest!r}: expected sha256:<64 hex>")
        if ":" in repo.rsplit("/", 1)[-1]:  # "name:tag@sha256:..": the digest wins
            repo = repo.rsplit(":", 1)[0]
    elif ":" in text.rsplit("/", 1)[-1]:
        repo, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise BadRequest(f"Invalid OCI tag {tag!r} in {text!r}")
    if not _REPO.match(repo):
        raise BadRequest(f"Invalid OCI image name {repo!r}: lower-case path components "
                         "such as library/alpine")
    return Reference(host, repo, tag or ("" if digest else "latest"), digest)


def manifest_digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def pick_manifest(raw: bytes, arch: str) -> str | None:
    """For an index (manifest list): the digest of the linux manifest for LXD
    architecture ``arch``; None when ``raw`` is a plain manifest. 404 when the index
    offers no image for this architecture."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Unavailable("The registry answered a manifest that is not JSON") from None
    if doc.get("mediaType") not in INDEX_TYPES and "manifests" not in doc:
        return None
    want = GOARCH.get(arch, arch)
    offered = []
    for m in doc.get("manifests") or []:
        plat = m.get("platform") or {}
        offered.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if plat.get("os") == "linux" and plat.get("architecture") == want and \
                _DIGEST.match(str(m.get("digest", ""))):
            return m["digest"]
    raise NotFound(f"The OCI image offers no linux/{want} variant (it has: "
                   f"{', '.join(offered) or 'none'})")


def layers_size(raw: bytes) -> int:
    """The compressed size of a manifest's layers (the download's total)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return 0
    return sum(int(layer.get("size") or 0) for layer in doc.get("layers") or [])


def skopeo_error(stderr: str, ref: Reference) -> CorralError:
    """skopeo's failure as an LXD-style error with the code that says what to do."""
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "skopeo failed"
    msg = re.sub(r'^time="[^"]*" level=\w+ msg="(.*)"$', r"\1", text).replace('\\"', '"')
    msg = re.sub(r'^Error parsing image name "[^"]*": ', "", msg)
    low = msg.lower()
    where = f"{ref.name} on {ref.host}"
    if "digest" in low and ("mismatch" in low or "not match" in low):
        return BadRequest(f"OCI image {where}: the registry sent content that does not "
                          f"match its digest: {msg}")
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        return NotFound(f"OCI image {where} not found: {msg}")
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return Forbidden(f"The OCI registry {ref.host} refused access to {ref.name}: "
                         f"wrong or missing credentials ({msg})")
    if "x509" in low or "certificate" in low or "tls" in low:
        return Unavailable(f"TLS verification of the OCI registry {ref.host} failed: "
                           f"{msg} (pass its certificate as source.certificate)")
    return Unavailable(f"The OCI registry {ref.host} cannot be reached or failed: {msg}")


def image_properties(ref: Reference, architecture: str) -> dict[str, str]:
    """The image record's properties (as Incus names them)."""
    return {"architecture": architecture, "type": "oci",
            "description": f"{ref.host}/{ref.name} (OCI)",
            "id": ref.name}


def metadata_yaml(ref: Reference, go_arch: str, created: float | None = None) -> str:
    arch = normalize_architecture(go_arch)
    doc: dict[str, Any] = {"architecture": arch,
                           "creation_date": int(created or time.time()),
                           "properties": image_properties(ref, arch)}
    return yaml.safe_dump(doc, sort_keys=False)


def runtime_process(config: dict[str, Any]) -> dict[str, Any]:
    """What the container needs of an OCI runtime config (``config.json``): ``args``,
    ``env`` (a list of "K=V"), ``cwd``, ``uid``, ``gid``; 400 when it has no command."""
    proc = config.get("process") or {}
    args = [str(a) for a in proc.get("args") or []]
    if not args:
        raise BadRequest("The OCI image has neither an entrypoint nor a command: set "
                         "oci.entrypoint")
    user = proc.get("user") or {}
    return {"args": args, "env": [str(e) for e in proc.get("env") or [] if "=" in str(e)],
            "cwd": str(proc.get("cwd") or "/"), "uid": int(user.get("uid") or 0),
            "gid": int(user.get("gid") or 0)}
