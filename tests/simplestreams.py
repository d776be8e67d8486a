"""A simplestreams image server for tests: a tree built by hand, served over HTTPS on loopback.

Why by hand: the JSON written here is the literal shape images.linuxcontainers.org serves
and LXD 5.0's client reads (``streams/v1/index.json`` -> ``streams/v1/images.json``,
products ``os:release:arch:variant``, versions, items with ``ftype``/``path``/``sha256``/
``size`` and the ``combined_*_sha256`` fingerprints on the ``lxd.tar.xz`` item). It shares
no code with ``shared/image/simplestreams.py`` or ``services/``, so a parser bug cannot hide
behind a serializer with the same bug.

The images are the busybox image of ``shared/image/build.py`` turned into split images: a
metadata tarball (``lxd.tar.xz``) plus a squashfs rootfs (made with ``mksquashfs``) and/or a
``root.tar.xz``. Each version writes its serial into ``metadata.yaml`` (so each version has
its own fingerprint) and into ``/etc/image-serial`` in the rootfs (so a test can see which
version an instance runs).

Use::

    srv = StreamServer(tmp_path / "ss", busybox_tarball)
    srv.add_version("20260101_0000")          # product busybox:1.36:amd64:default
    srv.start()                               # https://127.0.0.1:<port>/
    ...
    srv.add_version("20260102_0000")          # a newer version, served at once
    srv.corrupt(srv.fingerprints["20260102_0000"]["squashfs"], "squashfs")
    srv.stop()
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

# Debian's architecture names, as image servers write ``arch`` (LXD maps them back).
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
               "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}
HOST_ARCH = DEBIAN_ARCH.get(os.uname().machine, os.uname().machine)
# (variant, serial) -> mtime of its last metadata.yaml packed (see StreamServer.add_version)
_last_mtime: dict[tuple[str, str], int] = {}


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def make_cert(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed server certificate for 127.0.0.1; (crt, key, PEM text)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    directory.mkdir(parents=True, exist_ok=True)
    crt, keyf = directory / "server.crt", directory / "server.key"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    crt.write_bytes(pem)
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return crt, keyf, pem.decode()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET of files under the tree; the server's knobs decide 404s and throttling."""

    server: "_HTTPServer"
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY each response stalls ~40 ms on the client's delayed ACK.
    disable_nagle_algorithm = True
    # A client that went away (a cancelled pull) must not hold a handler forever.
    timeout = 30

    def setup(self) -> None:
        # The TLS handshake happens here, in the request's own thread: done in accept()
        # (the serve_forever thread), one stalled client blocked the whole server and
        # its shutdown at teardown (seen once: a cancelled pull's connection).
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        owner = self.server.owner
        rel = self.path.split("?", 1)[0].lstrip("/")
        owner.hits[rel] += 1
        path = (owner.root / rel).resolve()
        if rel in owner.missing or not path.is_file() or owner.root not in path.parents:
            body = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if rel.endswith(".json")
                         else "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        rate = owner.throttle if not rel.endswith(".json") else 0
        try:
            with open(path, "rb") as f:
                first = True
                while chunk := f.read(64 * 1024 if not rate else max(1, rate // 10)):
                    self.wfile.write(chunk)
                    if first and not rel.endswith(".json"):
                        # held after the first chunk: the client has started, cannot end
                        owner.flowing.wait(self.timeout)
                        first = False
                    if rate:
                        time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "StreamServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up or failed its handshake: nothing to report


class StreamServer:
    """The tree (``root``), its JSON (``products``), and the HTTPS server serving it."""

    def __init__(self, root: Path, busybox_tarball: Path, *, os_name: str = "busybox",
                 release: str = "1.36") -> None:
        self.root = Path(root).resolve()
        self.work = self.root.parent / (self.root.name + "-work")
        self.root.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.os, self.release = os_name, release
        self.products: dict[str, Any] = {}
        # serial -> {"squashfs": fp, "root.tar.xz": fp, "meta": sha256 of lxd.tar.xz}
        self.fingerprints: dict[str, dict[str, str]] = {}
        self.hits: Counter[str] = Counter()
        self.missing: set[str] = set()  # paths answered 404 although present
        self.throttle = 0  # bytes/s for image files (0: full speed)
        # Cleared, every image file download stops after its first chunk until it is set
        # again (a test that must act while a download is under way, with no race).
        self.flowing = threading.Event()
        self.flowing.set()
        self._unified = self.work / "unified"
        self._unified.mkdir(exist_ok=True)
        # Rootfs files depend only on the busybox tarball, variant and serial: built once
        # per tarball and copied (not linked: ``corrupt`` rewrites a file in place). The
        # metadata tarball is still made per server, so fingerprints stay new per server.
        self._rootfs_cache = Path(busybox_tarball).resolve().parent / "streams-rootfs-cache"
        subprocess.run(["tar", "-xJf", str(busybox_tarball), "-C", str(self._unified)],
                       check=True)
        self.crt, self.key, self.cert_pem = make_cert(self.work / "tls")
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- the tree --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def product_name(self, variant: str = "default") -> str:
        return f"{self.os}:{self.release}:{HOST_ARCH}:{variant}"

    def add_version(self, serial: str, *, variant: str = "default",
                    rootfs: tuple[str, ...] = ("squashfs", "root.tar.xz"),
                    aliases: str | None = None) -> dict[str, str]:
        """Build one version of product ``os:release:arch:variant`` (its files, and its
        entry in images.json, written at once). ``rootfs``: any of ``squashfs``,
        ``root.tar.xz`` (containers), ``disk-kvm.img`` (a VM: an empty qcow2 disk).
        Returns {ftype: fingerprint, "meta": sha256 of lxd.tar.xz}."""
        name = self.product_name(variant)
        base = f"{self.os}/{self.release}/{variant}"
        rel_dir = f"images/{self.os}/{self.release}/{HOST_ARCH}/{variant}/{serial}"
        out = self.root / rel_dir
        out.mkdir(parents=True, exist_ok=True)
        meta_dir = self.work / f"meta-{variant}-{serial}"
        shutil.rmtree(meta_dir, ignore_errors=True)
        meta_dir.mkdir()
        doc = yaml.safe_load((self._unified / "metadata.yaml").read_text())
        doc["properties"] = {**doc.get("properties", {}), "serial": serial,
                             "variant": variant,
                             "description": f"Busybox {self.release} {variant} ({serial})"}
        (meta_dir / "metadata.yaml").write_text(yaml.safe_dump(doc))
        # tar keeps whole seconds: a later mtime than the same version's last build keeps
        # the fingerprints new per server, also for two quick tests in the same second
        mtime = _last_mtime[(variant, serial)] = max(
            int(time.time()), _last_mtime.get((variant, serial), 0) + 1)
        os.utime(meta_dir / "metadata.yaml", (mtime, mtime))
        shutil.copytree(self._unified / "templates", meta_dir / "templates")
        subprocess.run(["tar", "-cJf", str(out / "lxd.tar.xz"), "-C", str(meta_dir),
                        "metadata.yaml", "templates"], check=True)
        rootdir = self._unified / "rootfs"
        (rootdir / "etc" / "image-serial").write_text(f"{variant} {serial}\n")
        items: dict[str, dict[str, Any]] = {}
        meta = out / "lxd.tar.xz"
        meta_item: dict[str, Any] = {"ftype": "lxd.tar.xz", "path": f"{rel_dir}/lxd.tar.xz",
                                     "sha256": _sha256(meta), "size": meta.stat().st_size}
        fps = {"meta": meta_item["sha256"]}
        if "squashfs" in rootfs:
            sq = out / "rootfs.squashfs"
            sq.unlink(missing_ok=True)
            self._rootfs_file(sq, f"{variant}-{serial}", ["mksquashfs", str(rootdir), str(sq),
                              "-noappend", "-all-root", "-comp", "gzip", "-quiet",
                              "-no-progress"])
            items["root.squashfs"] = {"ftype": "squashfs", "path": f"{rel_dir}/rootfs.squashfs",
                                      "sha256": _sha256(sq), "size": sq.stat().st_size}
            meta_item["combined_squashfs_sha256"] = fps["squashfs"] = _sha256(meta, sq)
        if "root.tar.xz" in rootfs:
            txz = out / "root.tar.xz"
            self._rootfs_file(txz, f"{variant}-{serial}",
                              ["tar", "-cJf", str(txz), "-C", str(rootdir), "."])
            items["root.tar.xz"] = {"ftype": "root.tar.xz", "path": f"{rel_dir}/root.tar.xz",
                                    "sha256": _sha256(txz), "size": txz.stat().st_size}
            combined = _sha256(meta, txz)
            meta_item["combined_sha256"] = meta_item["combined_rootxz_sha256"] = combined
            fps["root.tar.xz"] = combined
        if "disk-kvm.img" in rootfs:  # a VM image: an empty qcow2 disk is enough to pull
            disk = out / "disk.qcow2"
            disk.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"],
                           check=True)
            items["disk.qcow2"] = {"ftype": "disk-kvm.img", "path": f"{rel_dir}/disk.qcow2",
                                   "sha256": _sha256(disk), "size": disk.stat().st_size}
            meta_item["combined_disk-kvm-img_sha256"] = fps["disk-kvm.img"] = \
                _sha256(meta, disk)
        items["lxd.tar.xz"] = meta_item
        product = self.products.setdefault(name, {
            "aliases": aliases if aliases is not None else (
                f"{base},{self.os}/{self.release}" if variant == "default" else base),
            "arch": HOST_ARCH, "os": self.os,
            "release": self.release, "release_title": self.release, "variant": variant,
            "versions": {}})
        product["versions"][serial] = {"items": items}
        self.fingerprints[serial if variant == "default" else f"{variant}/{serial}"] = fps
        self.write()
        return fps

    def _rootfs_file(self, dest: Path, key: str, cmd: list[str]) -> None:
        """Make ``dest`` with ``cmd``, or copy it from the cache of an earlier server (xz
        of the rootfs takes most of a version's build; each test's server builds three)."""
        cached = self._rootfs_cache / f"{key}-{dest.name}"
        if not cached.is_file():
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            self._rootfs_cache.mkdir(exist_ok=True)
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.copyfile(dest, tmp)
            tmp.replace(cached)
            return
        shutil.copyfile(cached, dest)

    def remove_version(self, serial: str, variant: str = "default") -> None:
        """Drop a version from images.json (its files stay, as on a real mirror)."""
        self.products[self.product_name(variant)]["versions"].pop(serial)
        self.write()

    def write(self) -> None:
        """(Re)write index.json and images.json, atomically (a reader never sees half)."""
        streams = self.root / "streams" / "v1"
        streams.mkdir(parents=True, exist_ok=True)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        images = {"content_id": "images", "datatype": "image-downloads",
                  "format": "products:1.0", "updated": now, "products": self.products}
        index = {"format": "index:1.0", "updated": now, "index": {"images": {
            "datatype": "image-downloads", "path": "streams/v1/images.json",
            "format": "products:1.0", "updated": now, "products": sorted(self.products)}}}
        for fname, doc in (("images.json", images), ("index.json", index)):
            tmp = streams / (fname + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(streams / fname)

    def item_path(self, serial: str, ftype: str, variant: str = "default") -> Path:
        """The file of an item (``lxd.tar.xz``, ``squashfs``, ``root.tar.xz``)."""
        items = self.products[self.product_name(variant)]["versions"][serial]["items"]
        for item in items.values():
            if item["ftype"] == ftype:
                return self.root / item["path"]
        raise KeyError(ftype)

    def corrupt(self, serial: str, ftype: str, *, keep_size: bool = True,
                variant: str = "default") -> Path:
        """Damage an item's file: flip bytes in its middle (same size: a bad checksum), or
        append some (``keep_size`` False: a size mismatch). The JSON is left as it was."""
        path = self.item_path(serial, ftype, variant)
        data = bytearray(path.read_bytes())
        if keep_size:
            mid = len(data) // 2
            data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
        else:
            data += b"\0" * 4096
        path.write_bytes(bytes(data))
        return path

    # -- serving ---------------------------------------------------------------------

    def start(self) -> "StreamServer":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.crt), str(self.key))
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True,
                                       do_handshake_on_connect=False)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="simplestreams",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "StreamServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    """A loopback port nobody listens on (for the "server unreachable" case)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lxc_remote_env(conf: Path, name: str, server: StreamServer, *, pin: bool = True
                   ) -> dict[str, str]:
    """A private LXD_CONF for the stock client with ``name`` as a simplestreams remote of
    ``server`` (its certificate pinned in ``servercerts/<name>.crt`` unless ``pin`` is
    False); returns the environment entries to run ``lxc`` with."""
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "servercerts").mkdir(exist_ok=True)
    if pin:
        (conf / "servercerts" / f"{name}.crt").write_text(server.cert_pem)
    config = {"default-remote": "local", "remotes": {
        name: {"addr": server.url, "protocol": "simplestreams", "public": True},
        "local": {"addr": "unix://", "public": False}}}
    (conf / "config.yml").write_text(yaml.safe_dump(config))
    return {"LXD_CONF": str(conf)}


try:
    import pytest

    @pytest.fixture
    def stream_server(tmp_path, busybox_tarball):
        """A served tree with two versions of ``busybox:1.36:<arch>:default`` (squashfs
        and root.tar.xz each) and one of variant ``tarxz`` (root.tar.xz only)."""
        srv = StreamServer(tmp_path / "streams", busybox_tarball)
        srv.add_version("20260101_0000")
        srv.add_version("20260102_0000")
        srv.add_version("20260101_0000", variant="tarxz", rootfs=("root.tar.xz",))
        with srv:
            yield srv
except ImportError:  # used outside pytest (a bench script)
    pass
