"""The ``oci`` fetcher (see ``fetchers.py``): an image of an OCI distribution registry as
an LXD split image of an application container.

Why skopeo and umoci (as Incus): skopeo speaks the distribution protocol (token and
basic auth, TLS, manifest lists) and checks every blob against its digest while it
copies; umoci applies the layers in order with their whiteouts and writes the OCI
runtime config. Both run as subprocesses with a private auth file, signature policy and
certificate dir, so nothing of the host's container config (root's saved registry
logins, registries.conf mirrors aside) leaks into a pull.

``resolve`` pins the tag to a manifest digest (for an index: this host's linux
variant); ``download`` copies exactly that digest, so a tag moved meanwhile cannot mix
two images (skopeo checks the manifest it gets against that digest, and every blob
against its own).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from shared.errors import BadRequest, Internal, Unavailable
from shared.image import oci
from shared.image.format import normalize_architecture
from shared.messages.image import PullSource

from .fetchers import Fetched, Progress, Remote

SKOPEO_TIMEOUT = 600.0
_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def host_architecture() -> str:
    return normalize_architecture(os.uname().machine)


@asynccontextmanager
async def _session(source: PullSource, ref: oci.Reference) -> AsyncIterator[list[str]]:
    """skopeo's options for this source: our own auth file (the credentials, never on a
    command line other users can read), policy and pinned certificate; removed after."""
    d = Path(tempfile.mkdtemp(prefix="corral-oci-"))
    try:
        os.chmod(d, 0o700)
        auths = {}
        if source.credentials:
            if ":" not in source.credentials:
                raise BadRequest("Invalid OCI registry credentials: expected user:password")
            auths[ref.host] = {"auth": base64.b64encode(source.credentials.encode()).decode()}
        (d / "auth.json").write_text(json.dumps({"auths": auths}))
        (d / "policy.json").write_text(json.dumps(_POLICY))
        opts = ["--authfile", str(d / "auth.json")]
        if source.certificate.strip():
            certs = d / "certs"
            certs.mkdir()
            (certs / "registry.crt").write_text(source.certificate.strip() + "\n")
            opts += ["--cert-dir", str(certs)]
        yield [str(d / "policy.json"), *opts]
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _run(argv: list[str], ref: oci.Reference, timeout: float = 120.0) -> bytes:
    """Run a command; its failure as the error skopeo's message means (oci.skopeo_error)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} is not installed: pulling OCI images needs skopeo "
                          "and umoci (deploy/install.sh installs them)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        if argv[0] == "skopeo":
            raise oci.skopeo_error(err.decode(errors="replace"), ref)
        raise Internal(f"{argv[0]} {argv[1]} failed for {ref.name}: "
                       f"{err.decode(errors='replace').strip()[-1500:]}")
    return out


def _inspect(opts: list[str], *args: str) -> list[str]:
    """``skopeo inspect`` argv (``opts[0]`` is the policy file, unused by inspect)."""
    return ["skopeo", "inspect", "--retry-times", "1", *opts[1:], *args]


class Fetcher:
    async def resolve(self, source: PullSource, instance_type: str) -> Remote:
        if instance_type == "virtual-machine" or source.image_type == "virtual-machine":
            raise BadRequest("OCI images are application containers: they cannot make a "
                             "virtual-machine")
        ref = oci.parse_reference(source.server, source.alias or source.fingerprint or "")
        arch = host_architecture()
        async with _session(source, ref) as opts:
            raw = await _run(_inspect(opts, "--raw", ref.transport()), ref)
            digest = oci.pick_manifest(raw, arch)
            if digest is None:  # a plain manifest: its digest is its bytes'
                digest = oci.manifest_digest(raw)
                if ref.digest and ref.digest != digest:
                    raise BadRequest(f"OCI image {ref.name}: the registry's manifest has "
                                     f"digest {digest}, not the one asked for")
            else:
                raw = await _run(_inspect(opts, "--raw", ref.transport(digest)), ref)
                if oci.manifest_digest(raw) != digest:
                    raise BadRequest(f"OCI image {ref.name}: the manifest does not match "
                                     f"its digest {digest}")
            info = json.loads(await _run(_inspect(opts, "--config",
                                                  ref.transport(digest)), ref))
        go_arch = str(info.get("architecture") or "")
        try:
            image_arch = normalize_architecture(go_arch)
        except BadRequest:
            raise BadRequest(f"OCI image {ref.name} has unknown architecture "
                             f"{go_arch!r}") from None
        if info.get("os", "linux") != "linux":
            raise BadRequest(f"OCI image {ref.name} is for {info.get('os')}, not linux")
        fp = digest.split(":", 1)[1]
        return Remote(
            fingerprint=fp, type="container", architecture=image_arch,
            size=oci.layers_size(raw), properties=oci.image_properties(ref, image_arch),
            update_source={"alias": ref.name, "certificate": source.certificate,
                           "protocol": "oci", "server": source.server,
                           "image_type": "container"},
            private={"digest": digest, "go_arch": go_arch, "created": info.get("created")})

    async def download(self, source: PullSource, remote: Remote, workdir: Path,
                       progress: Progress) -> Fetched:
        ref = oci.parse_reference(source.server, source.alias or source.fingerprint or "")
        digest = remote.private.get("digest") or f"sha256:{remote.fingerprint}"
        layout, bundle = workdir / "oci-layout", workdir / "oci-bundle"
        try:
            return await self._download(source, ref, remote, digest, layout, bundle,
                                        workdir, progress)
        except BaseException:  # nothing half made stays in the caller's work dir
            for part in (layout, bundle, workdir / "oci-meta", workdir / "meta.tar",
                         workdir / "rootfs.squashfs"):
                if part.is_dir():
                    shutil.rmtree(part, ignore_errors=True)
                else:
                    part.unlink(missing_ok=True)
            raise

    async def _download(self, source: PullSource, ref: oci.Reference, remote: Remote,
                        digest: str, layout: Path, bundle: Path, workdir: Path,
                        progress: Progress) -> Fetched:
        total = int(remote.size or 0)
        async with _session(source, ref) as opts:
            copy = ["skopeo", "copy", "--quiet", "--retry-times", "2",
                    "--policy", opts[0], *[o.replace("--cert-dir", "--src-cert-dir")
                                           .replace("--authfile", "--src-authfile")
                                           for o in opts[1:]],
                    ref.transport(digest), f"oci:{layout}:image"]
            watcher = asyncio.create_task(_watch(layout, total, progress))
            try:
                await _run(copy, ref, SKOPEO_TIMEOUT)
            finally:
                watcher.cancel()
        _check_copied(layout, digest, ref)
        await progress("rootfs", total, total)
        await _run(["umoci", "unpack", "--image", f"{layout}:image", str(bundle)], ref,
                   SKOPEO_TIMEOUT)
        shutil.rmtree(layout, ignore_errors=True)
        return await asyncio.to_thread(_pack, ref, remote, bundle, workdir)


async def _watch(layout: Path, total: int, progress: Progress) -> None:
    """The copy's progress: the bytes of the blobs skopeo has written so far."""
    blobs = layout / "blobs" / "sha256"
    while True:
        done = 0
        try:
            done = sum(f.stat().st_size for f in blobs.iterdir())
        except OSError:
            pass
        await progress("rootfs", min(done, total) if total else done, total)
        await asyncio.sleep(0.5)


def _check_copied(layout: Path, digest: str, ref: oci.Reference) -> None:
    """skopeo wrote one image. (Copying by digest, skopeo itself checked the manifest
    against ``digest`` and each blob against its own; a Docker-format manifest is then
    converted to OCI's, so the stored one may carry another digest.)"""
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise Internal(f"OCI image {ref.name}: skopeo wrote no readable layout: {e}") from None
    if len(index.get("manifests") or []) != 1:
        raise Internal(f"OCI image {ref.name}: expected one manifest in the copied layout "
                       f"of {digest}")


def _pack(ref: oci.Reference, remote: Remote, bundle: Path, workdir: Path) -> Fetched:
    """The unpacked bundle as an LXD split image: metadata tarball (metadata.yaml and
    the runtime config.json) and a squashfs rootfs (owners, modes, xattrs kept)."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    oci.runtime_process(config)  # 400 now for an image that could never run
    meta_dir = workdir / "oci-meta"
    meta_dir.mkdir()
    (meta_dir / "metadata.yaml").write_text(
        oci.metadata_yaml(ref, str(remote.private.get("go_arch") or remote.architecture)))
    shutil.copy(config_path, meta_dir / "config.json")
    meta = workdir / "meta.tar"
    _cmd(["tar", "-cf", str(meta), "-C", str(meta_dir), "metadata.yaml", "config.json"], ref)
    rootfs = workdir / "rootfs.squashfs"
    _cmd(["mksquashfs", str(bundle / "rootfs"), str(rootfs), "-noappend", "-quiet",
          "-no-progress", "-comp", "gzip", "-xattrs"], ref)
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(meta_dir, ignore_errors=True)
    name = ref.repository.rsplit("/", 1)[-1]
    return Fetched(meta=meta, rootfs=rootfs, rootfs_part="rootfs",
                   fingerprint_is_content=False, filename=f"{name}-oci.tar")


def _cmd(argv: list[str], ref: oci.Reference) -> None:
    import subprocess

    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise Internal(f"{argv[0]} failed while converting OCI image {ref.name}: "
                       f"{res.stderr.strip()[-1500:]}")


FETCHER = Fetcher()
