"""A test "world" made through the HTTP API only: pool, optional bridge, profile, image.

Several test modules need the same scene to run containers in; building it here once
keeps them from drifting apart. Everything carries one unique ``t`` + 6 hex prefix and is
removed when the ``make_world`` context ends, also when a test failed: first every
instance with the prefix, then the alias, the image, the profile, the network, the pool.
"""

from __future__ import annotations

import subprocess
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from .stack import Stack, wait_for


def lxc(stack: Stack, *args: str, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """The stock LXD client against the test stack's socket; asserts success unless told."""
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def lxc_conf(path: Path) -> str:
    """``path`` made as a private LXD_CONF for the stock client, as a string for its env.

    The stock ``lxc`` makes its config directory only on some first runs (not for a unix
    ``remote add``, nor when /var/lib/lxd is absent): a test does not depend on which."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(path)


OP_TIMEOUT = 120


def wait_op(api: httpx.Client, r: httpx.Response, ok: bool = True) -> dict:
    """Wait for the operation an async reply started; assert it succeeded unless ``ok`` is
    False. Returns the final operation."""
    assert r.status_code == 202, r.text
    op = api.get(f"{r.json()['operation']}/wait",
                 params={"timeout": OP_TIMEOUT}).json()["metadata"]
    if ok:
        assert op["status"] == "Success", op
    return op


@dataclass
class World:
    """Names of what ``make_world`` made, and shortcuts for instances inside it."""

    api: httpx.Client
    stack: Stack
    prefix: str
    pool: str
    profile: str
    image: str  # the alias
    net: str | None = None
    fingerprint: str = ""
    instances: list[str] = field(default_factory=list)

    def name(self, tag: str) -> str:
        """A unique instance name (``<prefix>-<tag>``), remembered for the cleanup."""
        n = f"{self.prefix}-{tag}"
        self.instances.append(n)
        return n

    def wait(self, r: httpx.Response, ok: bool = True) -> dict:
        return wait_op(self.api, r, ok)

    def create(self, tag: str, start: bool = False, **body: Any) -> str:
        """Create ``<prefix>-<tag>`` from the world's image and profile (started if asked)."""
        name = self.name(tag)
        self.wait(self.api.post("/1.0/instances", json={
            "name": name, "source": {"type": "image", "alias": self.image},
            "profiles": [self.profile], "start": start, **body}))
        return name

    def state(self, name: str, action: str, ok: bool = True, **kw: Any) -> dict:
        return self.wait(self.api.put(f"/1.0/instances/{name}/state",
                                      json={"action": action, **kw}), ok)

    def get(self, name: str) -> dict:
        return self.api.get(f"/1.0/instances/{name}").json()["metadata"]

    def live(self, name: str) -> dict:
        return self.api.get(f"/1.0/instances/{name}/state").json()["metadata"]

    def remove(self, name: str) -> None:
        """Stop (forced) and delete an instance; nothing happens if it is gone already."""
        if self.api.get(f"/1.0/instances/{name}").status_code != 200:
            return
        r = self.api.put(f"/1.0/instances/{name}/state", json={"action": "stop", "force": True})
        if r.status_code == 202:
            self.wait(r, ok=False)
        try:  # a stop the service reports late must not make the delete fail
            wait_for(lambda: self.live(name)["status"] not in ("Running", "Frozen"), 20)
        except TimeoutError:
            pass  # the delete below says why
        r = self.api.delete(f"/1.0/instances/{name}")
        if r.status_code == 202:
            self.wait(r, ok=False)
        else:
            assert r.status_code == 404, f"cannot delete {name}: {r.text}"

    def lxc_dir(self, name: str) -> Path:
        return self.stack.dir / "lxc" / name

    def volume(self, name: str) -> Path:
        return self.stack.dir / "storage-pools" / self.pool / "containers" / name


def upload_image(api: httpx.Client, tarball: Path) -> str:
    """Import a unified image tarball (``POST /1.0/images``); return its fingerprint."""
    r = api.post("/1.0/images", content=tarball.read_bytes(), headers={
        "Content-Type": "application/octet-stream", "X-LXD-filename": tarball.name})
    return wait_op(api, r)["metadata"]["fingerprint"]


def _must(r: httpx.Response, *codes: int) -> None:
    assert r.status_code in codes, r.text


@contextmanager
def make_world(api: httpx.Client, stack: Stack, tarball: Path, *, network: bool,
               pool_driver: str, pool_config: dict[str, str] | None = None
               ) -> Iterator[World]:
    """Make a pool (``pool_driver``), a bridge network without NAT if ``network``, a
    profile (root disk, + eth0 on the bridge) and the image ``tarball`` under an alias;
    yield the ``World``; remove it all at the end, also when the body raised."""
    prefix = "t" + uuid.uuid4().hex[:6]
    w = World(api, stack, prefix, pool=f"{prefix}p", profile=f"{prefix}pr",
              image=f"{prefix}-bb", net=f"{prefix}n" if network else None)
    # An unprivileged root must traverse every parent of its rootfs (the test dir is 0700).
    for d in (stack.dir.parent, stack.dir):
        d.chmod(d.stat().st_mode | 0o011)
    if pool_config is None:
        pool_config = {} if pool_driver == "dir" else {"size": "768MiB"}
    try:
        _must(api.post("/1.0/storage-pools", json={
            "name": w.pool, "driver": pool_driver, "config": pool_config}), 200)
        devices: dict[str, dict[str, str]] = {
            "root": {"type": "disk", "path": "/", "pool": w.pool}}
        if w.net:
            _must(api.post("/1.0/networks", json={"name": w.net, "config": {
                "ipv4.address": "auto", "ipv4.nat": "false", "ipv6.address": "none"}}), 201)
            devices["eth0"] = {"type": "nic", "network": w.net, "name": "eth0"}
        _must(api.post("/1.0/profiles", json={"name": w.profile, "devices": devices}), 200)
        w.fingerprint = upload_image(api, tarball)
        _must(api.post("/1.0/images/aliases", json={"name": w.image,
                                                    "target": w.fingerprint}), 200, 201)
        yield w
    finally:
        _tear_down(w)


def _tear_down(w: World) -> None:
    """Remove what the world holds, in dependency order; report (not raise) what stays."""
    api, left = w.api, []

    def step(what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # keep going: one leftover must not leak all the rest
            left.append(f"{what}: {e!r}")

    def delete(url: str) -> None:
        r = api.delete(url)
        if r.status_code == 202:
            wait_op(api, r)
        else:
            assert r.status_code in (200, 404), r.text

    names = set(w.instances)
    step("instance list", lambda: names.update(
        u.rsplit("/", 1)[-1] for u in api.get("/1.0/instances").json()["metadata"]))
    for name in sorted(n for n in names if n.startswith(w.prefix)):
        step(f"instance {name}", lambda name=name: w.remove(name))
    step("alias", lambda: delete(f"/1.0/images/aliases/{w.image}"))
    if w.fingerprint:
        step("image", lambda: delete(f"/1.0/images/{w.fingerprint}"))
    step("profile", lambda: delete(f"/1.0/profiles/{w.profile}"))
    if w.net:
        step("network", lambda: delete(f"/1.0/networks/{w.net}"))
    step("pool", lambda: delete(f"/1.0/storage-pools/{w.pool}"))
    if left:
        warnings.warn(f"world {w.prefix} left behind: {'; '.join(left)}", stacklevel=2)
