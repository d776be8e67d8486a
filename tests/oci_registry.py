"""A real OCI distribution registry on loopback, and OCI images built in the test.

Why real: the OCI fetcher speaks to registries through skopeo (TLS, token/basic auth,
digests), so only a registry server shows whether that works. Debian's
``docker-registry`` (the CNCF distribution server) runs with its own config in a temp
dir: a free port on 127.0.0.1, filesystem storage, TLS with a self-signed certificate
made here, and optionally basic auth from an htpasswd file (bcrypt, from the C
library's crypt: Go's registry accepts nothing weaker). It is stopped by its PID.

Images are built with umoci from Debian's static busybox (a layer per ``insert``, so
the test also has a whiteout to unpack) and pushed with skopeo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "sleep", "cat", "ls", "pwd", "id", "env", "printenv", "true",
           "false", "touch", "mkdir", "rm", "ip", "hostname", "ping", "stat", "tr", "grep", "cut")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (SAN IP), as a registry's server cert."""
    cert, key = d / "registry.crt", d / "registry.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt's bcrypt; the venv has no bcrypt package
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@dataclass
class Registry:
    """One running registry; ``server`` is what a PullSource names."""

    dir: Path
    port: int
    cert: Path
    user: str = ""
    password: str = ""
    proc: subprocess.Popen | None = None
    pushed: dict[str, str] = field(default_factory=dict)  # "name:tag" -> manifest digest

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def certificate(self) -> str:
        return self.cert.read_text()

    @property
    def credentials(self) -> str:
        return f"{self.user}:{self.password}" if self.user else ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.dir / "config.yml")],
            stdout=open(self.dir / "registry.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited: "
                                   + (self.dir / "registry.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not listen within 15 s")

    def stop(self) -> None:
        """SIGTERM to our registry's PID (and only it), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def push(self, layout: Path, tag: str, name: str) -> str:
        """Push ``layout:tag`` as ``name`` ("repo:tag"); returns its manifest digest."""
        certs = self.dir / "certs.d"
        creds = ["--dest-creds", self.credentials] if self.user else []
        digest_file = self.dir / "pushed.digest"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-cert-dir", str(certs), *creds,
                        "--digestfile", str(digest_file), f"oci:{layout}:{tag}",
                        f"docker://{self.host}/{name}"], check=True, capture_output=True)
        self.pushed[name] = digest_file.read_text().strip()
        return self.pushed[name]


def start_registry(d: Path, user: str = "", password: str = "") -> Registry:
    """A registry in ``d`` (made), TLS always, basic auth when ``user`` is given."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = make_cert(d)
    certs = d / "certs.d"
    certs.mkdir(exist_ok=True)
    shutil.copy(cert, certs / "registry.crt")
    port = free_port()
    auth = ""
    if user:
        (d / "htpasswd").write_text(f"{user}:{bcrypt_hash(password)}\n")
        auth = f"auth:\n  htpasswd:\n    realm: corral-test\n    path: {d / 'htpasswd'}\n"
    (d / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"  tls:\n    certificate: {cert}\n    key: {key}\n" + auth)
    reg = Registry(d, port, cert, user, password)
    reg.start()
    return reg


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def build_busybox_image(work: Path, tag: str = "latest", *, entrypoint: list[str],
                        cmd: list[str] | None = None, env: list[str] | None = None,
                        workdir: str = "", user: str = "") -> Path:
    """An OCI layout ``work/layout`` holding ``tag``: busybox and a few applets in one
    layer, ``/etc/motd`` added and a ``/etc/gone`` file removed again (a whiteout) in
    later layers, then the config. Returns the layout path."""
    layout = work / "layout"
    if not layout.exists():
        _umoci("init", "--layout", str(layout))
    img = f"{layout}:{tag}"
    _umoci("new", "--image", img)
    base = work / f"base-{tag}"
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("bin", "etc", "tmp", "srv/app", "root"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, base / "bin/busybox")
    for a in APPLETS:
        (base / "bin" / a).symlink_to("busybox")
    (base / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "app:x:1000:1000:app:/srv/app:/bin/sh\n")
    (base / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (base / "etc/gone").write_text("removed by a later layer\n")
    (base / "srv/app/hello.txt").write_text("hello from the image\n")
    os.chown(base / "srv/app", 1000, 1000)
    _umoci("insert", "--image", img, str(base), "/")
    motd = work / f"motd-{tag}"
    motd.write_text(f"oci image {tag}\n")
    _umoci("insert", "--image", img, str(motd), "/etc/motd")
    _umoci("insert", "--image", img, "--whiteout", "/etc/gone")
    args = ["config", "--image", img, "--architecture", _goarch(), "--os", "linux",
            "--config.workingdir", workdir or "/"]
    args += [f"--config.entrypoint={e}" for e in entrypoint]
    args += [f"--config.cmd={c}" for c in cmd or []]
    args += [f"--config.env={e}" for e in env or []]
    if user:
        args += ["--config.user", user]
    _umoci(*args)
    return layout


def _goarch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)
